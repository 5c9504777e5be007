"""App config of ``notes``."""

from django.apps import AppConfig


class NotesConfig(AppConfig):
    name = "notes"
