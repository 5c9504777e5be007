"""Settings validation and the middleware's request handling.

Nothing here opens a database: a request that passes the stamp checks reaches
the tenant table, which the Rust end-to-end suite covers with a real one; the
tests that take a stamp past verification stub the lookup (``_activating``).
"""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory, override_settings

from conftest import TEST_KEYS
from tenant_gateway_django.conf import GatewaySettings, parse_settings
from tenant_gateway_django import middleware as middleware_module
from tenant_gateway_django.middleware import (
    TenantGatewayMiddleware,
    domain_url,
    header_values,
    raw_host,
    raw_method,
    raw_path,
    target_path,
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
    # RequestFactory is not gunicorn: no RAW_URI, and the decoded path is no
    # stand-in for the path as sent.
    assert raw_path(req) is None
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


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/whoami", "/whoami"),
        ("/files/a%20b?x=1", "/files/a%20b"),
        ("/whoami#top", "/whoami"),  # http's uri.path() drops a fragment
        ("/a?b#c", "/a"),
        ("//x/y?z", "//x/y"),  # origin form, not an authority
        ("*", "*"),
        # Absolute form: the path only, as the Rust verifier's uri.path().
        ("http://ferrari.myapp.localhost/whoami", "/whoami"),
        ("HTTPS://u@ferrari.myapp.localhost:8443/files/a%20b?x=1#f", "/files/a%20b"),
        ("http://ferrari.myapp.localhost", "/"),
        ("http://ferrari.myapp.localhost?x=1", "/"),
        ("http://ferrari.myapp.localhost#f", "/"),
        ("http://[::1]:8080//a", "//a"),
    ],
)
def test_target_path(target: str, path: str) -> None:
    assert target_path(target) == path
    req = RequestFactory().get("/ignored")
    req.META["RAW_URI"] = target
    assert raw_path(req) == path


def test_absolute_form_raw_uri_verifies(middleware: TenantGatewayMiddleware,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # gunicorn's RAW_URI is the target as sent: `GET http://host/whoami HTTP/1.1`.
    _activating(middleware, monkeypatch)
    tenant, sig = _stamp(path="/whoami")
    req = _gunicorn_like("/whoami", HTTP_X_TENANT=tenant, HTTP_X_TENANT_SIGNATURE=sig)
    req.META["RAW_URI"] = "http://ferrari.myapp.localhost/whoami?x=1"
    resp = middleware(req)
    assert resp.content == b"view reached"


def _asgi_request(method: str, raw: bytes, host: str = "ferrari.myapp.localhost",
                  root_path: str = "", **headers: str) -> ASGIRequest:
    """An ASGIRequest from a scope as an ASGI server builds it (lower-case header names)."""
    path, _, query = raw.partition(b"?")
    scope = {
        "type": "http",
        "method": method,
        "path": unquote(path.decode()),
        "raw_path": raw,
        "root_path": root_path,
        "query_string": query,
        "headers": [(b"host", host.encode())]
        + [(name.lower().encode(), value.encode()) for name, value in headers.items()],
    }
    return ASGIRequest(scope, io.BytesIO(b""))


def test_asgi_method_case_is_kept(middleware: TenantGatewayMiddleware,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Django's ASGIRequest upper-cases the method into META["REQUEST_METHOD"] too.
    _activating(middleware, monkeypatch)
    tenant, sig = _stamp(method="get")
    req = _asgi_request("get", b"/whoami", **{"x-tenant": tenant, "x-tenant-signature": sig})
    assert (req.method, req.META["REQUEST_METHOD"], raw_method(req)) == ("GET", "GET", "get")
    assert middleware(req).content == b"view reached"


def test_asgi_raw_path_keeps_the_root_path() -> None:
    # raw_path is the path as received on the wire, which is what the gateway
    # signed and forwarded; a root_path prefix in it is not removed.
    req = _asgi_request("GET", b"/app/files/a%20b?x=1", root_path="/app")
    assert raw_path(req) == "/app/files/a%20b"
    assert raw_path(_asgi_request("GET", b"http://ferrari.myapp.localhost/a%2Fb?x")) == "/a%2Fb"


# --- middleware, up to the tenant lookup -------------------------------------------


@pytest.fixture()
def middleware() -> TenantGatewayMiddleware:
    return TenantGatewayMiddleware(_ok)


def _activating(mw: TenantGatewayMiddleware, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Let ``mw`` activate a stamped tenant without a database: ``get_tenant``
    answers an active tenant whose schema is the stamped name, and
    ``connection.set_tenant`` records its argument in the list returned."""
    activated: list[Any] = []
    monkeypatch.setattr(mw, "get_tenant",
                        lambda model, name: SimpleNamespace(schema_name=name, is_active=True))
    monkeypatch.setattr(middleware_module.connection, "set_tenant", activated.append)
    monkeypatch.setattr(middleware_module.connection, "set_schema_to_public", lambda: None)
    return activated


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


def test_a_server_without_the_raw_target_fails_closed(
    middleware: TenantGatewayMiddleware, monkeypatch: pytest.MonkeyPatch
) -> None:
    # runserver gives no RAW_URI: a stamp valid for the decoded path is not
    # taken for it (a stamp for /files/a/b would pass for /files/a%2Fb), and
    # no tenant is activated.
    activated = _activating(middleware, monkeypatch)
    tenant, sig = _stamp(path="/files/a/b")
    req = _gunicorn_like("/files/a%2Fb", HTTP_X_TENANT=tenant, HTTP_X_TENANT_SIGNATURE=sig)
    del req.META["RAW_URI"]
    assert req.path == "/files/a/b"
    resp = middleware(req)
    assert resp.status_code == 500
    assert _body(resp)["error"] == "raw_target_unavailable"
    assert activated == []
    # The health answer reads no tenant data: it still works there.
    req = RequestFactory().get("/healthz")
    assert middleware(req).content == b"ok"


def test_method_case_is_kept(middleware: TenantGatewayMiddleware) -> None:
    tenant, sig = _stamp(method="GET")
    req = _gunicorn_like("/whoami", HTTP_X_TENANT=tenant, HTTP_X_TENANT_SIGNATURE=sig)
    req.META["REQUEST_METHOD"] = "get"
    assert _body(middleware(req))["error"] == "stamp_bad_signature"


def test_valid_stamp_over_the_raw_path_reaches_the_view(
    middleware: TenantGatewayMiddleware, monkeypatch: pytest.MonkeyPatch
) -> None:
    # request.path is "/files/a b": only the raw path matches the signature.
    activated = _activating(middleware, monkeypatch)
    tenant, sig = _stamp(path="/files/a%20b")
    req = _gunicorn_like("/files/a%20b?x=1", HTTP_X_TENANT=tenant, HTTP_X_TENANT_SIGNATURE=sig)
    assert req.META["RAW_URI"] == "/files/a%20b?x=1"
    resp = middleware(req)
    assert resp.content == b"view reached"
    assert req.tenant.schema_name == "ferrari"  # type: ignore[attr-defined]
    assert req.tenant.domain_url == "ferrari.myapp.localhost"  # type: ignore[attr-defined]
    assert activated == [req.tenant]  # type: ignore[attr-defined]


def test_domain_url_drops_www_as_django_tenants(
    middleware: TenantGatewayMiddleware, monkeypatch: pytest.MonkeyPatch
) -> None:
    activated = _activating(middleware, monkeypatch)
    tenant, sig = _stamp(host="www.ferrari.myapp.localhost")
    req = _gunicorn_like("/whoami", host="WWW.Ferrari.MyApp.localhost:8080",
                         HTTP_X_TENANT=tenant, HTTP_X_TENANT_SIGNATURE=sig)
    assert middleware(req).content == b"view reached"
    assert activated[0].domain_url == "ferrari.myapp.localhost"
    for host, expected in [("www.shop.test", "shop.test"), ("wwwx.shop.test", "wwwx.shop.test"),
                           ("shop.test.", "shop.test"), ("www.localhost:80", "localhost")]:
        assert domain_url(_gunicorn_like("/", host=host)) == expected


def test_rejected_path_is_logged_on_one_line(
    middleware: TenantGatewayMiddleware, caplog: pytest.LogCaptureFixture
) -> None:
    # %0A decodes to a line feed in request.path: logged raw, it would forge a log line.
    req = _gunicorn_like("/a%0A2030-01-01 forged entry")
    assert "\n" in req.path
    with caplog.at_level(logging.WARNING, logger="tenant_gateway_django"):
        assert middleware(req).status_code == 401
    (record,) = caplog.records
    message = record.getMessage()
    assert "stamp_missing" in message
    assert "\n" not in message and "\r" not in message
    assert "/a\\n2030-01-01 forged entry" in message
