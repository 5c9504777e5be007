"""A per-tenant model: rows live in the tenant's own schema."""

from django.db import models


class Note(models.Model):
    text = models.TextField()

    def __str__(self) -> str:
        return self.text
