"""Test setup: a minimal django-tenants configuration (no database is ever opened)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings

TESTS_DIR = Path(__file__).resolve().parent
VECTORS_PATH = Path(__file__).resolve().parents[3] / "stamp" / "vectors.json"

TEST_KEYS = {"k1": "test-secret-0123456789abcdef", "k2": "rotated-secret-fedcba9876543210"}

if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only",
        ALLOWED_HOSTS=["*"],
        DATABASES={
            "default": {
                # Never connected to: only the paths that need no database are tested here.
                "ENGINE": "django_tenants.postgresql_backend",
                "NAME": "unused",
                "HOST": "127.0.0.1",
                "PORT": "1",
            }
        },
        DATABASE_ROUTERS=("django_tenants.routers.TenantSyncRouter",),
        SHARED_APPS=["django_tenants", "tg_testapp", "django.contrib.contenttypes"],
        TENANT_APPS=["django.contrib.contenttypes"],
        INSTALLED_APPS=[
            "django_tenants",
            "tg_testapp",
            "django.contrib.contenttypes",
            "tenant_gateway_django",
        ],
        TENANT_MODEL="tg_testapp.Tenant",
        TENANT_DOMAIN_MODEL="tg_testapp.Host",
        PUBLIC_SCHEMA_URLCONF="tests_public_urls",
        ROOT_URLCONF="tests_public_urls",
        TENANT_GATEWAY={
            "KEYS": dict(TEST_KEYS),
            "MAX_SKEW": 30,
            "HEALTH_PATH": "/healthz",
            "ACTIVE_FIELD": "is_active",
        },
        USE_TZ=True,
    )
    django.setup()


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    with VECTORS_PATH.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data
