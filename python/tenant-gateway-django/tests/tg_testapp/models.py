"""Tenant and domain models with odd table and column names; never migrated."""

from django.db import models
from django_tenants.models import DomainMixin, TenantMixin


class Tenant(TenantMixin):
    code = models.CharField(max_length=20, unique=True)
    is_active = models.BooleanField(default=True)
    auto_create_schema = False

    class Meta:
        db_table = 'tg "odd" tenants'


class Host(DomainMixin):
    # The FK points at a non-primary-key column, and the domain column is renamed.
    domain = models.CharField(max_length=253, unique=True, db_column="Host Name")
    tenant = models.ForeignKey(
        Tenant, to_field="code", db_column="tenant$code", related_name="domains",
        on_delete=models.CASCADE,
    )

    class Meta:
        db_table = "tg.hosts"
