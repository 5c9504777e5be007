"""Generate the SQL that keeps Tenant Gateway's routing cache fresh.

This module's one job: from the project's django-tenants models, produce the
index, trigger functions and triggers that ``pg_notify`` the gateway with a
JSON array of the lower-cased host names whose routing may have changed
(the gateway evicts exactly those cache keys), and the SQL that removes them.

:func:`build_install_statements` / :func:`build_remove_statements` are pure
(table and column names in, SQL out); :func:`install_sql` / :func:`remove_sql`
read the names from ``TENANT_MODEL`` / ``TENANT_DOMAIN_MODEL``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_CHANNEL",
    "MAX_PAYLOAD_BYTES",
    "TriggerTables",
    "build_install_statements",
    "build_remove_statements",
    "install_sql",
    "install_statements",
    "quote_ident",
    "remove_sql",
    "remove_statements",
    "tables_from_models",
    "validate_channel",
]

DEFAULT_CHANNEL: Final = "tenant_gateway"
# NOTIFY payloads must be shorter than 8000 bytes; stay well below.
MAX_PAYLOAD_BYTES: Final = 7900
_CHANNEL_RE: Final = re.compile(r"[A-Za-z0-9_]+", re.ASCII)
_MAX_IDENT_BYTES: Final = 63

DOMAINS_FUNCTION: Final = "tenant_gateway_notify_domains"
TENANTS_FUNCTION: Final = "tenant_gateway_notify_tenants"
DOMAINS_TRIGGER: Final = "tenant_gateway_domains"
TENANTS_TRIGGER: Final = "tenant_gateway_tenants"
# The same object names as the gateway's own `gateway triggers install`, so
# either tool can install, re-install or remove them. The legacy names below
# come from the hand-written config/django-tenants-notify.sql of earlier
# releases; installing drops them so a tenant update is not notified twice.
LEGACY_TENANTS_FUNCTION: Final = "tenant_gateway_notify_clients"
LEGACY_TENANTS_TRIGGER: Final = "tenant_gateway_clients"


@dataclass(frozen=True)
class TriggerTables:
    """Where django-tenants keeps tenants and domains (unquoted names)."""

    schema: str  # the public schema, where shared apps' tables live
    tenant_table: str
    tenant_key_column: str  # the column the domain's FK points at (the PK)
    domain_table: str
    domain_column: str
    domain_tenant_column: str  # the domain's FK column, e.g. tenant_id


def quote_ident(name: str) -> str:
    """A PostgreSQL quoted identifier: ``"..."`` with inner quotes doubled."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"an SQL identifier must be a non-empty str, not {name!r}")
    if "\x00" in name:
        raise ValueError(f"an SQL identifier cannot contain NUL: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def validate_channel(channel: str) -> str:
    """Return ``channel`` if it is 1-63 of ``[A-Za-z0-9_]``, else raise ValueError."""
    if not isinstance(channel, str) or not _CHANNEL_RE.fullmatch(channel) or len(channel) > 63:
        raise ValueError(f"channel {channel!r} must be 1-63 characters of [A-Za-z0-9_]")
    return channel


def _index_name(domain_table: str) -> str:
    """``<domain_table>_tg_lower_domain_idx``, cut to 63 bytes at a character
    boundary as PostgreSQL would cut it (the same name `gateway triggers` uses)."""
    raw = f"{domain_table}_tg_lower_domain_idx".encode("utf-8")[:_MAX_IDENT_BYTES]
    return raw.decode("utf-8", "ignore")


def _dollar_tag(*bodies: str) -> str:
    tag = "$tenant_gateway$"
    n = 0
    while any(tag in body for body in bodies):
        n += 1
        tag = f"$tenant_gateway{n}$"
    return tag


def _function(qualified_name: str, body: str) -> str:
    tag = _dollar_tag(body)
    return (
        f"CREATE OR REPLACE FUNCTION {qualified_name}() RETURNS trigger\n"
        f"LANGUAGE plpgsql AS {tag}\n{body}{tag}"
    )


def build_install_statements(tables: TriggerTables, channel: str = DEFAULT_CHANNEL) -> list[str]:
    """The install SQL, one statement per item; idempotent (safe to run again)."""
    validate_channel(channel)
    q = quote_ident
    schema = q(tables.schema)
    domain_table = f"{schema}.{q(tables.domain_table)}"
    tenant_table = f"{schema}.{q(tables.tenant_table)}"
    domain_col = q(tables.domain_column)
    fk_col = q(tables.domain_tenant_column)
    key_col = q(tables.tenant_key_column)
    chan = _quote_literal(channel)
    domains_fn = f"{schema}.{q(DOMAINS_FUNCTION)}"
    tenants_fn = f"{schema}.{q(TENANTS_FUNCTION)}"

    domains_body = f"""DECLARE
    names text[] := ARRAY[]::text[];
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        names := array_append(names, lower(OLD.{domain_col}::text));
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NOT (lower(NEW.{domain_col}::text) = ANY (names)) THEN
        names := array_append(names, lower(NEW.{domain_col}::text));
    END IF;
    PERFORM pg_notify({chan}, to_jsonb(names)::text);
    RETURN NULL;
END
"""
    # One notification per batch of at most MAX_PAYLOAD_BYTES of JSON text.
    # jsonb renders a text array as ["a", "b"]: 2 bytes of brackets, each item's
    # JSON string, and ", " between items.
    tenants_body = f"""DECLARE
    batch text[] := ARRAY[]::text[];
    batch_bytes integer := 2;
    item_bytes integer;
    host text;
BEGIN
    FOR host IN
        SELECT DISTINCT lower(d.{domain_col}::text)
          FROM {domain_table} d
         WHERE d.{fk_col} = OLD.{key_col}
            OR (TG_OP = 'UPDATE' AND d.{fk_col} = NEW.{key_col})
         ORDER BY 1
    LOOP
        item_bytes := octet_length(to_jsonb(host)::text);
        IF cardinality(batch) > 0 AND batch_bytes + 2 + item_bytes > {MAX_PAYLOAD_BYTES} THEN
            PERFORM pg_notify({chan}, to_jsonb(batch)::text);
            batch := ARRAY[]::text[];
            batch_bytes := 2;
        END IF;
        IF cardinality(batch) > 0 THEN
            batch_bytes := batch_bytes + 2;
        END IF;
        batch := array_append(batch, host);
        batch_bytes := batch_bytes + item_bytes;
    END LOOP;
    IF cardinality(batch) > 0 THEN
        PERFORM pg_notify({chan}, to_jsonb(batch)::text);
    END IF;
    RETURN NULL;
END
"""
    index = q(_index_name(tables.domain_table))
    return [
        f"CREATE INDEX IF NOT EXISTS {index} ON {domain_table} (lower({domain_col}))",
        _function(domains_fn, domains_body),
        _function(tenants_fn, tenants_body),
        f"DROP TRIGGER IF EXISTS {q(DOMAINS_TRIGGER)} ON {domain_table}",
        f"CREATE TRIGGER {q(DOMAINS_TRIGGER)}\n"
        f"    AFTER INSERT OR UPDATE OR DELETE ON {domain_table}\n"
        f"    FOR EACH ROW EXECUTE FUNCTION {domains_fn}()",
        f"DROP TRIGGER IF EXISTS {q(LEGACY_TENANTS_TRIGGER)} ON {tenant_table}",
        f"DROP FUNCTION IF EXISTS {schema}.{q(LEGACY_TENANTS_FUNCTION)}()",
        f"DROP TRIGGER IF EXISTS {q(TENANTS_TRIGGER)} ON {tenant_table}",
        f"CREATE TRIGGER {q(TENANTS_TRIGGER)}\n"
        f"    AFTER UPDATE OR DELETE ON {tenant_table}\n"
        f"    FOR EACH ROW EXECUTE FUNCTION {tenants_fn}()",
    ]


def build_remove_statements(tables: TriggerTables) -> list[str]:
    """SQL that drops everything :func:`build_install_statements` creates."""
    q = quote_ident
    schema = q(tables.schema)
    domain_table = f"{schema}.{q(tables.domain_table)}"
    tenant_table = f"{schema}.{q(tables.tenant_table)}"
    return [
        f"DROP TRIGGER IF EXISTS {q(DOMAINS_TRIGGER)} ON {domain_table}",
        f"DROP TRIGGER IF EXISTS {q(TENANTS_TRIGGER)} ON {tenant_table}",
        f"DROP TRIGGER IF EXISTS {q(LEGACY_TENANTS_TRIGGER)} ON {tenant_table}",
        f"DROP FUNCTION IF EXISTS {schema}.{q(DOMAINS_FUNCTION)}()",
        f"DROP FUNCTION IF EXISTS {schema}.{q(TENANTS_FUNCTION)}()",
        f"DROP FUNCTION IF EXISTS {schema}.{q(LEGACY_TENANTS_FUNCTION)}()",
        f"DROP INDEX IF EXISTS {schema}.{q(_index_name(tables.domain_table))}",
    ]


def to_script(statements: list[str]) -> str:
    """Statements as one SQL script (each ends with ``;``)."""
    return "".join(f"{s};\n\n" for s in statements).rstrip("\n") + "\n"


def tables_from_models() -> TriggerTables:
    """Read table and column names from ``TENANT_MODEL`` / ``TENANT_DOMAIN_MODEL``."""
    from django.db.models import ForeignKey
    from django_tenants.utils import (
        get_public_schema_name,
        get_tenant_domain_model,
        get_tenant_model,
    )

    tenant_model = get_tenant_model()
    domain_model = get_tenant_domain_model()
    domain_field = domain_model._meta.get_field("domain")
    fks = [
        f
        for f in domain_model._meta.concrete_fields
        if isinstance(f, ForeignKey) and f.related_model is tenant_model
    ]
    if not fks:
        raise ValueError(
            f"{domain_model._meta.label} has no foreign key to {tenant_model._meta.label}"
        )
    fk = next((f for f in fks if f.name == "tenant"), fks[0])
    return TriggerTables(
        schema=get_public_schema_name(),
        tenant_table=tenant_model._meta.db_table,
        tenant_key_column=fk.target_field.column,
        domain_table=domain_model._meta.db_table,
        domain_column=domain_field.column,
        domain_tenant_column=fk.column,
    )


def install_statements(channel: str = DEFAULT_CHANNEL) -> list[str]:
    return build_install_statements(tables_from_models(), channel)


def remove_statements() -> list[str]:
    return build_remove_statements(tables_from_models())


def install_sql(channel: str = DEFAULT_CHANNEL) -> str:
    """The install SQL for this project's models, as one script."""
    return to_script(install_statements(channel))


def remove_sql() -> str:
    """The remove SQL for this project's models, as one script."""
    return to_script(remove_statements())
