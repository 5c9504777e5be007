"""Public-schema URLconf (PUBLIC_SCHEMA_URLCONF)."""

from django.urls import path

from customers import views

urlpatterns = [
    path("whoami", views.whoami),
]
