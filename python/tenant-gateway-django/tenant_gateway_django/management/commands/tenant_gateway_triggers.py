"""``manage.py tenant_gateway_triggers install|remove|print [--channel NAME] [--database ALIAS]``.

This command's one job: install, remove or print the NOTIFY triggers (see
:mod:`tenant_gateway_django.triggers`) that tell Tenant Gateway which host
names to evict from its routing cache.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, transaction

from tenant_gateway_django import triggers


class Command(BaseCommand):
    help = (
        "Install, remove or print the PostgreSQL triggers that NOTIFY Tenant Gateway "
        "when a tenant or domain changes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["install", "remove", "print"])
        parser.add_argument(
            "--channel",
            default=triggers.DEFAULT_CHANNEL,
            help="NOTIFY channel the gateway LISTENs on (default: %(default)s)",
        )
        parser.add_argument(
            "--database",
            default=None,
            help="database alias (default: django-tenants' TENANT_DB_ALIAS, i.e. 'default')",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        action: str = options["action"]
        channel: str = options["channel"]
        try:
            triggers.validate_channel(channel)
            if action == "remove":
                statements = triggers.remove_statements()
            else:
                statements = triggers.install_statements(channel)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

        if action == "print":
            self.stdout.write(triggers.to_script(statements), ending="")
            return

        from django_tenants.utils import get_tenant_database_alias

        alias = options["database"] or get_tenant_database_alias()
        connection = connections[alias]
        if hasattr(connection, "set_schema_to_public"):
            connection.set_schema_to_public()
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
        if action == "install":
            self.stdout.write(f"installed Tenant Gateway triggers (channel {channel!r})")
        else:
            self.stdout.write("removed Tenant Gateway triggers")
