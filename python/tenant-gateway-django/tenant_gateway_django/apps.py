"""Django app config: makes ``tenant_gateway_django`` an installable app (for its command)."""

from django.apps import AppConfig


class TenantGatewayConfig(AppConfig):
    name = "tenant_gateway_django"
    verbose_name = "Tenant Gateway"
    default_auto_field = "django.db.models.AutoField"
