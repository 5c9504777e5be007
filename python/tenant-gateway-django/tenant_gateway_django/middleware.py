"""``TenantGatewayMiddleware``: activate the tenant named by the gateway's stamp.

This module's one job is a drop-in replacement for django-tenants'
``TenantMainMiddleware``: instead of looking the Host header up in the domain
table, it verifies the signed ``X-Tenant`` stamp that Tenant Gateway added and
activates that tenant through django-tenants' own API (``set_schema_to_public``,
``set_tenant``, ``setup_url_routing``), exactly as ``TenantMainMiddleware``
does after its own lookup. Put it first in ``MIDDLEWARE``, in place of
``django_tenants.middleware.main.TenantMainMiddleware``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Callable

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import connection
from django.db.models import Model
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin
from django_tenants.middleware.main import TenantMainMiddleware
from django_tenants.utils import get_tenant_model, remove_www

from .conf import GatewaySettings, load_settings
from .stamp import StampError, Verifier, normalize_host

__all__ = [
    "TenantGatewayMiddleware",
    "domain_url",
    "header_values",
    "raw_host",
    "raw_method",
    "raw_path",
    "target_path",
]

logger = logging.getLogger("tenant_gateway_django")

TENANT_META_KEY = "HTTP_X_TENANT"
SIGNATURE_META_KEY = "HTTP_X_TENANT_SIGNATURE"


def _from_wsgi(value: str) -> str:
    """Undo PEP 3333's latin-1 decoding of header bytes, so UTF-8 bytes read as
    the text the gateway signed. Bytes that are not UTF-8 are kept as
    surrogate escapes (the MAC encodes them back to the same bytes)."""
    try:
        return value.encode("latin-1").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # not a PEP 3333 native string: already text
        return value


def header_values(meta: Mapping[str, Any], key: str) -> list[str]:
    """Every value of a request header, from its WSGI ``META`` entry.

    WSGI servers fold repeated header fields into one value joined by ``,``
    (gunicorn: ``",".join(values)``). Neither a valid ``X-Tenant`` wire form nor a
    valid v1 signature can contain a comma, so a comma means the header was
    sent more than once: the value is split there and the stamp is then
    rejected as malformed.
    """
    raw = meta.get(key)
    if raw is None:
        return []
    return _from_wsgi(str(raw)).split(",")


# An absolute-form request target's "scheme://authority" (RFC 3986 scheme,
# authority up to the first "/", "?" or "#").
_ABSOLUTE_FORM_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
_PATH_END = re.compile(r"[?#]")


def target_path(target: str) -> str:
    """The path of a request target, as the gateway signs it (docs/stamp.md's P,
    the Rust ``http`` crate's ``uri.path()``): percent-encoding kept, cut at the
    query's ``?`` or a fragment's ``#``. An absolute-form target
    (``http://host/a%20b?q``) gives its path (``/a%20b``), ``/`` if it has none.
    """
    absolute = _ABSOLUTE_FORM_PREFIX.match(target)
    if absolute is None:
        return _PATH_END.split(target, maxsplit=1)[0]
    return _PATH_END.split(target[absolute.end():], maxsplit=1)[0] or "/"


def _asgi_scope(request: HttpRequest) -> Mapping[str, Any] | None:
    """The ASGI connection scope of a request Django's ASGI handler built, else None."""
    scope = getattr(request, "scope", None)
    return scope if isinstance(scope, Mapping) else None


def raw_path(request: HttpRequest) -> str | None:
    """The request path as received: percent-encoding kept, no query string.

    gunicorn sets ``RAW_URI``, uWSGI and others ``REQUEST_URI``; under ASGI the
    scope's ``raw_path`` is used: the bytes on the wire, which include a
    ``root_path`` prefix (the gateway signed the path it forwards, so nothing
    is removed). ``None`` for a server that gives none of these (Django's
    ``runserver``): ``request.path`` is percent-decoded, so ``/a%2Fb`` and
    ``/a/b`` would read alike, and a stamp for one would pass for the other.
    See :func:`target_path`.
    """
    for key in ("RAW_URI", "REQUEST_URI"):
        uri = request.META.get(key)
        if uri:
            return target_path(_from_wsgi(str(uri)))
    scope = _asgi_scope(request)
    if scope is not None:
        raw = scope.get("raw_path")
        if isinstance(raw, bytes) and raw:
            return target_path(raw.decode("utf-8", "surrogateescape"))
    return None


def raw_host(request: HttpRequest) -> str:
    """The Host header exactly as sent ("" if absent). Not ``request.get_host()``,
    which validates against ALLOWED_HOSTS and may rewrite the value."""
    return _from_wsgi(str(request.META.get("HTTP_HOST", "")))


def raw_method(request: HttpRequest) -> str:
    """The method as sent: ``request.method`` is upper-cased by Django, and so
    is ``META["REQUEST_METHOD"]`` under ASGI, where the scope's ``method`` is
    read instead."""
    scope = _asgi_scope(request)
    if scope is not None:
        method = scope.get("method")
        if isinstance(method, str) and method:
            return method
    return str(request.META.get("REQUEST_METHOD") or request.method or "")


def domain_url(request: HttpRequest) -> str:
    """``tenant.domain_url`` as django-tenants sets it: the host without a port and
    without a leading ``www.`` (its ``remove_www``). Taken from the raw ``Host``
    header, normalised as the stamp's host is, not from ``request.get_host()``,
    whose ALLOWED_HOSTS check the signed host makes redundant."""
    return str(remove_www(normalize_host(raw_host(request))))


_NO_RAW_TARGET = (
    "the server gives no raw request target (RAW_URI, REQUEST_URI or the ASGI "
    "scope's raw_path), and the stamp binds the path as sent: serve the app with "
    "gunicorn, uWSGI or an ASGI server, not runserver"
)


def _sized(response: HttpResponse) -> HttpResponse:
    # Answered before CommonMiddleware could add it: no chunked encoding for a fixed body.
    response["Content-Length"] = str(len(response.content))
    return response


def _error(code: str, message: str, status: int) -> HttpResponse:
    return _sized(JsonResponse({"error": code, "message": message}, status=status))


class TenantGatewayMiddleware(MiddlewareMixin):
    """Selects the database schema from the gateway's signed stamp.

    Must be first in ``MIDDLEWARE``. Answers 401 (stamp rejected), 403
    (``tenant_unknown`` / ``tenant_suspended``), or sets ``request.tenant`` and
    the connection's schema like ``TenantMainMiddleware``.
    """

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        super().__init__(get_response)
        self.config: GatewaySettings = load_settings()
        try:
            self.verifier = Verifier(self.config.keys, self.config.max_skew)
        except ValueError as exc:  # conf already checked these; keep the message
            raise ImproperlyConfigured(f"TENANT_GATEWAY: {exc}") from exc
        if self.config.active_field is not None:
            model = get_tenant_model()
            try:
                model._meta.get_field(self.config.active_field)
            except FieldDoesNotExist:
                raise ImproperlyConfigured(
                    f"TENANT_GATEWAY['ACTIVE_FIELD'] names {self.config.active_field!r}, "
                    f"which is not a field of {model._meta.label}"
                ) from None

    def get_tenant(self, tenant_model: type[Model], schema_name: str) -> Model:
        """The tenant whose schema the stamp names (override to customise)."""
        return tenant_model.objects.get(schema_name=schema_name)

    def verify_request(self, request: HttpRequest, path: str) -> str:
        """The stamped tenant name of ``request`` (``path``: its raw path);
        raises :class:`StampError`."""
        return self.verifier.verify(
            header_values(request.META, TENANT_META_KEY),
            header_values(request.META, SIGNATURE_META_KEY),
            raw_method(request),
            raw_host(request),
            path,
        )

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        path = raw_path(request)
        health = self.config.health_path
        # The health answer reads no tenant data: a decoded path will do.
        if health is not None and (request.path if path is None else path) == health:
            return _sized(HttpResponse(b"ok", content_type="text/plain"))

        # As TenantMainMiddleware: the connection must first be at the public
        # schema, as this is where the tenant metadata is stored.
        connection.set_schema_to_public()  # type: ignore[attr-defined]

        if path is None:
            # Fail closed: the stamp binds the path as sent, which this
            # server does not give (docs/stamp.md has no fallback).
            logger.error("tenant stamp cannot be checked: %s", _NO_RAW_TARGET)
            return _error("raw_target_unavailable", _NO_RAW_TARGET, 500)

        try:
            schema_name = self.verify_request(request, path)
        except StampError as exc:
            # %r: a decoded path may hold a line break (%0A) that would forge a log line.
            logger.warning("tenant stamp rejected: %s (%s %r)", exc.code, request.method, request.path)
            return _error(exc.code, exc.message, exc.status)

        tenant_model = get_tenant_model()
        try:
            tenant = self.get_tenant(tenant_model, schema_name)
        except tenant_model.DoesNotExist:
            logger.warning("stamped tenant %r does not exist", schema_name)
            return _error("tenant_unknown", f"no tenant with schema {schema_name!r}", 403)

        active_field = self.config.active_field
        if active_field is not None and not getattr(tenant, active_field):
            return _error("tenant_suspended", f"tenant {schema_name!r} is suspended", 403)

        tenant.domain_url = domain_url(request)  # type: ignore[attr-defined]
        request.tenant = tenant  # type: ignore[attr-defined]
        connection.set_tenant(request.tenant)  # type: ignore[attr-defined]
        self.setup_url_routing(request)
        return None

    @staticmethod
    def setup_url_routing(request: HttpRequest, force_public: bool = False) -> None:
        """Pick the URLconf exactly as django-tenants does (PUBLIC_SCHEMA_URLCONF
        for the public tenant; TENANT_TYPES' URLCONF with multi-type tenants)."""
        TenantMainMiddleware.setup_url_routing(request, force_public=force_public)
