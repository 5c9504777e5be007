"""Settings of the test project: django-tenants, with TenantGatewayMiddleware in
place of TenantMainMiddleware.

Environment:
  DATABASE_URL      postgres://user[:password]@host[:port]/dbname (default: postgres@127.0.0.1:5432/postgres)
  SECRET_KEY        Django's secret key (a fixed default is used for tests)
  TG_STAMP_KEY_K1   secret of stamp key id "k1" (required to serve requests)
  TG_STAMP_KEY_K2   secret of stamp key id "k2" (optional: key rotation)
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def database_from_url(url: str) -> dict[str, object]:
    """Django's DATABASES entry for a ``postgres://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ImproperlyConfigured(f"DATABASE_URL must be postgres://..., not {url!r}")
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise ImproperlyConfigured(f"DATABASE_URL has no database name: {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL has a bad port: {url!r}") from exc
    return {
        "ENGINE": "django_tenants.postgresql_backend",
        "NAME": name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": unquote(parts.hostname or ""),
        "PORT": str(port or ""),
    }


SECRET_KEY = os.environ.get("SECRET_KEY", "tenant-gateway-tests-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]

DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    )
}
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)

SHARED_APPS = [
    "django_tenants",  # mandatory
    "customers",  # the app holding the tenant and domain models
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "tenant_gateway_django",
]
TENANT_APPS = [
    "django.contrib.contenttypes",
    "notes",
]
INSTALLED_APPS = list(SHARED_APPS) + [app for app in TENANT_APPS if app not in SHARED_APPS]

TENANT_MODEL = "customers.Client"
TENANT_DOMAIN_MODEL = "customers.Domain"
PUBLIC_SCHEMA_URLCONF = "djproject.public_urls"
ROOT_URLCONF = "djproject.urls"

MIDDLEWARE = [
    "tenant_gateway_django.middleware.TenantGatewayMiddleware",  # replaces TenantMainMiddleware
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

_stamp_keys = {
    kid: os.environ[var]
    for kid, var in (("k1", "TG_STAMP_KEY_K1"), ("k2", "TG_STAMP_KEY_K2"))
    if os.environ.get(var)
}
TENANT_GATEWAY = {
    "KEYS": _stamp_keys,  # empty (no TG_STAMP_KEY_K1) -> ImproperlyConfigured when serving
    "MAX_SKEW": 30,
    "HEALTH_PATH": "/healthz",
    "ACTIVE_FIELD": "is_active",
}

TEMPLATES: list[dict[str, object]] = []
WSGI_APPLICATION = "djproject.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "tenant_gateway_django": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
