"""Trigger SQL generation: quoting, channel validation, names read from the models."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from tenant_gateway_django import triggers
from tenant_gateway_django.triggers import (
    TriggerTables,
    build_install_statements,
    build_remove_statements,
    install_sql,
    quote_ident,
    remove_sql,
    tables_from_models,
    validate_channel,
)

PLAIN = TriggerTables(
    schema="public",
    tenant_table="customers_client",
    tenant_key_column="id",
    domain_table="customers_domain",
    domain_column="domain",
    domain_tenant_column="tenant_id",
)


def test_quote_ident() -> None:
    assert quote_ident("customers_domain") == '"customers_domain"'
    assert quote_ident('a"b') == '"a""b"'
    assert quote_ident('"') == '""""'
    assert quote_ident("Mixed Case.x") == '"Mixed Case.x"'
    for bad in ["", "a\x00b"]:
        with pytest.raises(ValueError):
            quote_ident(bad)


@pytest.mark.parametrize("channel", ["tenant_gateway", "A", "x_1", "c" * 63])
def test_valid_channels(channel: str) -> None:
    assert validate_channel(channel) == channel


@pytest.mark.parametrize(
    "channel", ["", "a-b", "a b", "a;b", "a'b", 'a"b', "é", "ch\n", "c" * 64, "١"]
)
def test_invalid_channels(channel: str) -> None:
    with pytest.raises(ValueError, match="channel"):
        validate_channel(channel)
    with pytest.raises(ValueError):
        build_install_statements(PLAIN, channel)


def test_install_sql_shape() -> None:
    stmts = build_install_statements(PLAIN, "my_channel")
    sql = triggers.to_script(stmts)
    assert stmts[0] == (
        'CREATE INDEX IF NOT EXISTS "customers_domain_tg_lower_domain_idx" '
        'ON "public"."customers_domain" (lower("domain"))'
    )
    assert 'CREATE OR REPLACE FUNCTION "public"."tenant_gateway_notify_domains"() RETURNS trigger' in sql
    assert 'CREATE OR REPLACE FUNCTION "public"."tenant_gateway_notify_tenants"() RETURNS trigger' in sql
    assert 'DROP TRIGGER IF EXISTS "tenant_gateway_domains" ON "public"."customers_domain"' in stmts
    assert 'DROP TRIGGER IF EXISTS "tenant_gateway_tenants" ON "public"."customers_client"' in stmts
    assert "AFTER INSERT OR UPDATE OR DELETE ON \"public\".\"customers_domain\"" in sql
    assert "AFTER UPDATE OR DELETE ON \"public\".\"customers_client\"" in sql
    # Payload: a JSON array of lower-cased host names, on the chosen channel.
    assert sql.count("pg_notify('my_channel', to_jsonb(") == 3
    assert "tenant_gateway'" not in sql.replace("pg_notify('my_channel'", "")
    assert 'lower(OLD."domain"::text)' in sql
    assert 'lower(NEW."domain"::text)' in sql
    assert 'd."tenant_id" = OLD."id"' in sql
    assert 'd."tenant_id" = NEW."id"' in sql
    assert f"> {triggers.MAX_PAYLOAD_BYTES}" in sql
    # The hand-written config/django-tenants-notify.sql trigger is replaced, not doubled.
    assert 'DROP TRIGGER IF EXISTS "tenant_gateway_clients" ON "public"."customers_client"' in stmts
    assert 'DROP FUNCTION IF EXISTS "public"."tenant_gateway_notify_clients"()' in stmts
    assert sql.endswith(";\n")
    assert all(not s.rstrip().endswith(";") for s in stmts if not s.startswith("CREATE OR REPLACE"))


def test_install_is_idempotent_sql() -> None:
    for stmt in build_install_statements(PLAIN):
        first = stmt.split(None, 3)[:3]
        assert (
            stmt.startswith("CREATE INDEX IF NOT EXISTS")
            or stmt.startswith("CREATE OR REPLACE FUNCTION")
            or stmt.startswith("DROP TRIGGER IF EXISTS")
            or stmt.startswith("DROP FUNCTION IF EXISTS")
            or first == ["CREATE", "TRIGGER", '"tenant_gateway_domains"']
            or first == ["CREATE", "TRIGGER", '"tenant_gateway_tenants"']
        ), stmt


def test_every_create_trigger_is_preceded_by_its_drop() -> None:
    stmts = build_install_statements(PLAIN)
    for i, stmt in enumerate(stmts):
        if stmt.startswith("CREATE TRIGGER"):
            name, table = stmt.split()[2], stmt.split(" ON ")[1].split()[0]
            assert stmts[i - 1] == f"DROP TRIGGER IF EXISTS {name} ON {table}"


def test_odd_names_are_quoted() -> None:
    odd = TriggerTables(
        schema='my"schema',
        tenant_table='tg "odd" tenants',
        tenant_key_column='Key"Col',
        domain_table="tg.hosts",
        domain_column="Host Name",
        domain_tenant_column="tenant$code",
    )
    sql = triggers.to_script(build_install_statements(odd))
    assert '"my""schema"."tg ""odd"" tenants"' in sql
    assert '"my""schema"."tg.hosts"' in sql
    assert 'lower(OLD."Host Name"::text)' in sql
    assert 'd."tenant$code" = OLD."Key""Col"' in sql
    assert '"tg.hosts_tg_lower_domain_idx"' in sql
    assert 'lower("Host Name")' in sql
    # '$' in an identifier never collides with the function body's dollar quote.
    assert "AS $tenant_gateway$" in sql
    remove = triggers.to_script(build_remove_statements(odd))
    assert 'DROP INDEX IF EXISTS "my""schema"."tg.hosts_tg_lower_domain_idx"' in remove


def test_dollar_quote_tag_avoids_the_body() -> None:
    sneaky = TriggerTables(
        schema="public",
        tenant_table="t",
        tenant_key_column="id",
        domain_table="d",
        domain_column="x$tenant_gateway$y",
        domain_tenant_column="tenant_id",
    )
    stmts = build_install_statements(sneaky)
    functions = [s for s in stmts if s.startswith("CREATE OR REPLACE FUNCTION")]
    assert len(functions) == 2
    for fn in functions:
        assert "AS $tenant_gateway1$\n" in fn
        assert fn.endswith("END\n$tenant_gateway1$")
        body = fn.split("$tenant_gateway1$")[1]
        assert '"x$tenant_gateway$y"' in body


def test_long_table_name_is_cut_like_postgresql_cuts_it() -> None:
    long = TriggerTables("public", "t", "id", "d" * 60, "domain", "tenant_id")
    index_stmt = build_install_statements(long)[0]
    name = index_stmt.split('"')[1]
    assert name == ("d" * 60 + "_tg_lower_domain_idx")[:63]
    assert f'DROP INDEX IF EXISTS "public"."{name}"' in build_remove_statements(long)
    wide = TriggerTables("public", "t", "id", "é" * 40, "domain", "tenant_id")
    name = build_install_statements(wide)[0].split('"')[1]
    assert name == "é" * 31  # 62 bytes: a 2-byte character is never split
    assert len(name.encode()) <= 63


def test_remove_sql_shape() -> None:
    stmts = build_remove_statements(PLAIN)
    assert all(" IF EXISTS " in s for s in stmts)
    assert 'DROP INDEX IF EXISTS "public"."customers_domain_tg_lower_domain_idx"' in stmts
    assert 'DROP FUNCTION IF EXISTS "public"."tenant_gateway_notify_domains"()' in stmts
    assert 'DROP FUNCTION IF EXISTS "public"."tenant_gateway_notify_tenants"()' in stmts
    assert stmts.index('DROP TRIGGER IF EXISTS "tenant_gateway_domains" ON "public"."customers_domain"') < \
        stmts.index('DROP FUNCTION IF EXISTS "public"."tenant_gateway_notify_domains"()')


def test_names_come_from_the_models() -> None:
    # tests/tg_testapp: odd table names, a renamed domain column, FK to a non-PK column.
    assert tables_from_models() == TriggerTables(
        schema="public",
        tenant_table='tg "odd" tenants',
        tenant_key_column="code",
        domain_table="tg.hosts",
        domain_column="Host Name",
        domain_tenant_column="tenant$code",
    )
    sql = install_sql("chan_1")
    assert 'ON "public"."tg.hosts" (lower("Host Name"))' in sql
    assert 'd."tenant$code" = OLD."code"' in sql
    assert "pg_notify('chan_1'" in sql
    assert '"public"."tg ""odd"" tenants"' in remove_sql()


def test_print_command() -> None:
    out = io.StringIO()
    call_command("tenant_gateway_triggers", "print", "--channel", "gw_2", stdout=out)
    assert out.getvalue() == install_sql("gw_2")
    out = io.StringIO()
    call_command("tenant_gateway_triggers", "print", stdout=out)
    assert "pg_notify('tenant_gateway'" in out.getvalue()


def test_command_rejects_a_bad_channel() -> None:
    with pytest.raises(CommandError, match="channel"):
        call_command("tenant_gateway_triggers", "print", "--channel", "bad-channel")
