"""Tenant URLconf (every tenant but the public one)."""

from django.urls import path

from notes import views

urlpatterns = [
    path("whoami", views.whoami),
    path("notes", views.notes),
]
