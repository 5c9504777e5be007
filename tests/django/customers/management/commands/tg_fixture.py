"""``manage.py tg_fixture ACTION ...``: tenants, domains and notes for the e2e suite.

This command's one job is to set up the test data through the ORM, the way a
Django user would (``Client(...).save()``, ``Domain.objects.create(...)``), so
that django-tenants creates schemas and the NOTIFY triggers fire for real.
Each action prints one JSON line describing what it did.

  create-public  --domain D [--name N]
  create-tenant  --schema S --name N --domain D [--domain D2 ...] [--primary D]
  add-domain     --schema S --domain D [--primary]
  delete-domain  --domain D
  set-active     --schema S --active true|false
  add-note       --schema S --text T
  delete-tenant  --schema S [--drop-schema]
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django_tenants.utils import get_public_schema_name, schema_context

from customers.models import Client, Domain


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, not {text!r}")


class Command(BaseCommand):
    help = "Create tenants, domains and notes for Tenant Gateway's end-to-end tests."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        p = sub.add_parser("create-public", help="the public tenant (schema 'public') and its domain")
        p.add_argument("--domain", required=True)
        p.add_argument("--name", default="Public")

        p = sub.add_parser("create-tenant", help="a tenant (its schema is created and migrated)")
        p.add_argument("--schema", required=True)
        p.add_argument("--name", required=True)
        p.add_argument("--domain", action="append", required=True, help="repeatable")
        p.add_argument("--primary", help="which --domain is primary (default: the first)")
        p.add_argument("--inactive", action="store_true", help="create with is_active=False")

        p = sub.add_parser("add-domain")
        p.add_argument("--schema", required=True)
        p.add_argument("--domain", required=True)
        p.add_argument("--primary", action="store_true")

        p = sub.add_parser("delete-domain")
        p.add_argument("--domain", required=True)

        p = sub.add_parser("set-active")
        p.add_argument("--schema", required=True)
        p.add_argument("--active", required=True, type=_bool)

        p = sub.add_parser("add-note")
        p.add_argument("--schema", required=True)
        p.add_argument("--text", required=True)

        p = sub.add_parser("delete-tenant", help="delete a tenant and its domains")
        p.add_argument("--schema", required=True)
        p.add_argument("--drop-schema", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        action: str = options["action"]
        handler = getattr(self, "do_" + action.replace("-", "_"))
        result: dict[str, Any] = handler(options)
        self.stdout.write(json.dumps({"action": action, **result}, ensure_ascii=False))

    @staticmethod
    def _tenant(schema: str) -> Client:
        try:
            return Client.objects.get(schema_name=schema)
        except Client.DoesNotExist:
            raise CommandError(f"no tenant with schema {schema!r}") from None

    def do_create_public(self, o: dict[str, Any]) -> dict[str, Any]:
        # As in django-tenants' docs: the public tenant is a Client whose
        # schema is the public schema (which exists already, so nothing is created).
        tenant = Client(schema_name=get_public_schema_name(), name=o["name"])
        tenant.save()
        domain = Domain.objects.create(domain=o["domain"], tenant=tenant, is_primary=True)
        return {"schema": tenant.schema_name, "id": tenant.pk, "domains": [domain.domain]}

    def do_create_tenant(self, o: dict[str, Any]) -> dict[str, Any]:
        domains: list[str] = o["domain"]
        primary: str = o["primary"] or domains[0]
        if primary not in domains:
            raise CommandError(f"--primary {primary!r} is not one of the --domain values")
        tenant = Client(schema_name=o["schema"], name=o["name"], is_active=not o["inactive"])
        tenant.save()  # auto_create_schema: creates and migrates the schema
        with transaction.atomic():
            for d in domains:
                Domain.objects.create(domain=d, tenant=tenant, is_primary=(d == primary))
        return {"schema": tenant.schema_name, "id": tenant.pk, "domains": domains, "primary": primary}

    def do_add_domain(self, o: dict[str, Any]) -> dict[str, Any]:
        tenant = self._tenant(o["schema"])
        domain = Domain.objects.create(domain=o["domain"], tenant=tenant, is_primary=o["primary"])
        return {"schema": tenant.schema_name, "domain": domain.domain, "primary": domain.is_primary}

    def do_delete_domain(self, o: dict[str, Any]) -> dict[str, Any]:
        try:
            domain = Domain.objects.select_related("tenant").get(domain=o["domain"])
        except Domain.DoesNotExist:
            raise CommandError(f"no domain {o['domain']!r}") from None
        schema = domain.tenant.schema_name
        domain.delete()
        return {"schema": schema, "domain": o["domain"]}

    def do_set_active(self, o: dict[str, Any]) -> dict[str, Any]:
        tenant = self._tenant(o["schema"])
        tenant.is_active = o["active"]
        tenant.save()
        return {"schema": tenant.schema_name, "active": tenant.is_active}

    def do_add_note(self, o: dict[str, Any]) -> dict[str, Any]:
        from notes.models import Note

        tenant = self._tenant(o["schema"])
        with schema_context(tenant.schema_name):
            note = Note.objects.create(text=o["text"])
        return {"schema": tenant.schema_name, "id": note.pk, "text": note.text}

    def do_delete_tenant(self, o: dict[str, Any]) -> dict[str, Any]:
        tenant = self._tenant(o["schema"])
        domains = list(tenant.domains.values_list("domain", flat=True))
        tenant.auto_drop_schema = bool(o["drop_schema"])
        tenant.delete(force_drop=bool(o["drop_schema"]))
        return {"schema": o["schema"], "domains": domains, "schema_dropped": bool(o["drop_schema"])}
