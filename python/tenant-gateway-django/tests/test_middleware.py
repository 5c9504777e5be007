"""Settings validation and the middleware's request handling up to the tenant lookup.

Nothing here opens a database: a request that passes the stamp checks reaches
the tenant table, which the Rust end-to-end suite covers with a real one.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory, override_settings

from conftest import TEST_KEYS
from tenant_gateway_django.conf import GatewaySettings, parse_settings
from tenant_gateway_django.middleware import (
    TenantGatewayMiddleware,
    header_values,
    raw_host,
    raw_method,
    raw_path,
)
from tenant_gateway_django.stamp import sign

GOOD = {"KEYS": {"k1": "x" * 16}}


def _ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse("view reached")


# --- settings ---------------------------------------------------------------


def test_defaults() -> None:
    conf = parse_settings(GOOD)
    assert conf == GatewaySettings(keys={"k1": "x" * 16}, max_skew=30, health_path="/healthz")
    assert conf.active_field is None
    assert "x" * 16 not in repr(conf)


def test_full_settings() -> None:
    conf = parse_settings(
        {"KEYS": {"k1": "a" * 16, "k2": "b" * 40}, "MAX_SKEW": 5, "HEALTH_PATH": None,
         "ACTIVE_FIELD": "is_active"}
    )
    assert dict(conf.keys) == {"k1": "a" * 16, "k2": "b" * 40}
    assert (conf.max_skew, conf.health_path, conf.active_field) == (5, None, "is_active")


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (None, "TENANT_GATEWAY is not set"),
        ([], "TENANT_GATEWAY must be a dict"),
        ({}, "['KEYS']"),
        ({"KEYS": {}}, "['KEYS']"),
        ({"KEYS": ["k1"]}, "['KEYS']"),
        ({"KEYS": {"k1": "short"}}, "TENANT_GATEWAY['KEYS']['k1'] is 5 bytes"),
        ({"KEYS": {"k1": None}}, "['KEYS']['k1'] must be a str"),
        ({"KEYS": {"bad kid": "x" * 16}}, "'bad kid'"),
        ({**GOOD, "MAX_SKEW": -1}, "['MAX_SKEW']"),
        ({**GOOD, "MAX_SKEW": "30"}, "['MAX_SKEW']"),
        ({**GOOD, "MAX_SKEW": False}, "['MAX_SKEW']"),
        ({**GOOD, "HEALTH_PATH": "healthz"}, "['HEALTH_PATH']"),
        ({**GOOD, "HEALTH_PATH": 1}, "['HEALTH_PATH']"),
        ({**GOOD, "ACTIVE_FIELD": ""}, "['ACTIVE_FIELD']"),
        ({**GOOD, "ACTIVE_FIELD": 3}, "['ACTIVE_FIELD']"),
        ({**GOOD, "KEY": {}}, "unknown key(s) 'KEY'"),
    ],
)
def test_bad_settings_name_the_key(raw: Any, named: str) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        parse_settings(raw)
    assert named in str(info.value)


def test_middleware_validates_at_startup() -> None:
    with override_settings(TENANT_GATEWAY={"KEYS": {"k1": "short"}}):
        with pytest.raises(ImproperlyConfigured, match="KEYS"):
            TenantGatewayMiddleware(_ok)
    with override_settings(TENANT_GATEWAY={**GOOD, "ACTIVE_FIELD": "enabled"}):
        with pytest.raises(ImproperlyConfigured, match="'enabled', which is not a field of tg_testapp.Tenant"):
            TenantGatewayMiddleware(_ok)
    with override_settings(TENANT_GATEWAY={**GOOD, "ACTIVE_FIELD": "is_active"}):
        TenantGatewayMiddleware(_ok)


# --- request parsing ----------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({}, []),
        ({"HTTP_X_TENANT": ""}, [""]),
        ({"HTTP_X_TENANT": "ferrari"}, ["ferrari"]),
        ({"HTTP_X_TENANT": "ferrari,ferrari"}, ["ferrari", "ferrari"]),
        ({"HTTP_X_TENANT": "a, b,c"}, ["a", " b", "c"]),
        ({"HTTP_X_TENANT": "caf\xc3\xa9"}, ["café"]),  # PEP 3333 latin-1 of UTF-8 bytes
    ],
)
def test_header_values(meta: dict[str, str], expected: list[str]) -> None:
    assert header_values(meta, "HTTP_X_TENANT") == expected


def test_raw_request_fields() -> None:
    rf = RequestFactory()
    req = rf.get("/files/a%20b/%2Fx?q=1", HTTP_HOST="Ferrari.MyApp.localhost:8080")
    # RequestFactory is not gunicorn: no RAW_URI, so the decoded path is the fallback.
    assert raw_path(req) == "/files/a b//x"
    req.META["RAW_URI"] = "/files/a%20b/%2Fx?q=1"
    assert raw_path(req) == "/files/a%20b/%2Fx"
    del req.META["RAW_URI"]
    req.META["REQUEST_URI"] = "/r%2F?x=?"
    assert raw_path(req) == "/r%2F"
    assert raw_host(req) == "Ferrari.MyApp.localhost:8080"
    del req.META["HTTP_HOST"]
    assert raw_host(req) == ""
    req.META["HTTP_HOST"] = "\xc7\x85.example"  # "ǅ" as UTF-8 bytes, latin-1 decoded
    assert raw_host(req) == "ǅ.example"
    req.META["REQUEST_METHOD"] = "get"
    assert req.method == "GET"
    assert raw_method(req) == "get"


# --- middleware, up to the tenant lookup -------------------------------------------


@pytest.fixture()
def middleware() -> TenantGatewayMiddleware:
    return TenantGatewayMiddleware(_ok)


def _gunicorn_like(path: str, host: str = "ferrari.myapp.localhost", method: str = "GET",
                   **headers: str) -> HttpRequest:
    req = RequestFactory().generic(method, path, HTTP_HOST=host, **headers)
    req.META["RAW_URI"] = path
    return req


def _body(resp: HttpResponse) -> dict[str, str]:
    data: dict[str, str] = json.loads(resp.content)
    return data


def test_health_path_needs_no_stamp(middleware: TenantGatewayMiddleware) -> None:
    resp = middleware(_gunicorn_like("/healthz"))
    assert resp.status_code == 200
    assert resp.content == b"ok"
    assert resp["Content-Type"].startswith("text/plain")
    resp = middleware(_gunicorn_like("/healthz?probe=1"))
    assert resp.content == b"ok"


def test_health_path_disabled() -> None:
    with override_settings(TENANT_GATEWAY={**GOOD, "HEALTH_PATH": None}):
        mw = TenantGatewayMiddleware(_ok)
    resp = mw(_gunicorn_like("/healthz"))
    assert resp.status_code == 401
    assert _body(resp)["error"] == "stamp_missing"


def test_no_stamp_is_401(middleware: TenantGatewayMiddleware) -> None:
    resp = middleware(_gunicorn_like("/whoami"))
    assert resp.status_code == 401
    assert resp["Content-Type"] == "application/json"
    body = _body(resp)
    assert body["error"] == "stamp_missing"
    assert body["message"]
    assert not hasattr(resp, "tenant")


def _stamp(path: str = "/whoami", host: str = "ferrari.myapp.localhost", method: str = "GET",
           ts: int | None = None) -> tuple[str, str]:
    import time

    return sign("k1", TEST_KEYS["k1"], "ferrari", method, host, path,
                int(time.time()) if ts is None else ts)


@pytest.mark.parametrize(
    ("tenant_header", "signature_header"),
    [
        ("ferrari,ferrari", None),  # X-Tenant sent twice, folded by the server
        (None, "{sig},{sig}"),  # signature sent twice
        ("ferrari,other", None),
        ("", None),
    ],
)
def test_folded_headers_are_malformed(
    middleware: TenantGatewayMiddleware, tenant_header: str | None, signature_header: str | None
) -> None:
    tenant, sig = _stamp()
    headers = {
        "HTTP_X_TENANT": tenant if tenant_header is None else tenant_header,
        "HTTP_X_TENANT_SIGNATURE": sig if signature_header is None else signature_header.format(sig=sig),
    }
    resp = middleware(_gunicorn_like("/whoami", **headers))
    assert resp.status_code == 401
    assert _body(resp)["error"] == "stamp_malformed"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"path": "/whoami/"}, "stamp_bad_signature"),
        ({"host": "mclaren.myapp.localhost"}, "stamp_bad_signature"),
        ({"method": "POST"}, "stamp_bad_signature"),
        ({"ts": 1}, "stamp_expired"),
    ],
)
def test_stamp_is_bound_to_the_request(
    middleware: TenantGatewayMiddleware, change: dict[str, Any], code: str
) -> None:
    request_fields = {"path": "/whoami", "host": "ferrari.myapp.localhost", "method": "GET"}
    stamp_fields: dict[str, Any] = {**request_fields, **({"ts": change["ts"]} if "ts" in change else {})}
    tenant, sig = _stamp(**stamp_fields)
    sent = {**request_fields, **{k: v for k, v in change.items() if k != "ts"}}
    req = _gunicorn_like(sent["path"], host=sent["host"], method=sent["method"],
                         HTTP_X_TENANT=tenant, HTTP_X_TENANT_SIGNATURE=sig)
    resp = middleware(req)
    assert resp.status_code == 401
    assert _body(resp)["error"] == code


def test_raw_uri_is_what_is_signed(middleware: TenantGatewayMiddleware) -> None:
    # Signed over the raw path; Django's decoded request.path would not match.
    tenant, sig = _stamp(path="/files/a%20b")
    req = _gunicorn_like("/files/a%20b?x=1", HTTP_X_TENANT=tenant, HTTP_X_TENANT_SIGNATURE=sig)
    req.META["RAW_URI"] = "/files/a%2Fb?x=1"
    resp = middleware(req)
    assert _body(resp)["error"] == "stamp_bad_signature"


def test_method_case_is_kept(middleware: TenantGatewayMiddleware) -> None:
    tenant, sig = _stamp(method="GET")
    req = _gunicorn_like("/whoami", HTTP_X_TENANT=tenant, HTTP_X_TENANT_SIGNATURE=sig)
    req.META["REQUEST_METHOD"] = "get"
    assert _body(middleware(req))["error"] == "stamp_bad_signature"
