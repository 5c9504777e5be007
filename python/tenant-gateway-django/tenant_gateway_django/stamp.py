"""Verify (and, for tests and tools, create) Tenant Gateway v1 stamps.

This module's one job is the stamp contract of docs/stamp.md: the
``X-Tenant`` / ``X-Tenant-Signature`` header pair that the gateway adds to
every request it forwards. It is framework-free and uses the standard library
only, so it can be used outside Django too.

Every regular expression here is ASCII-only (``re.ASCII`` and explicit
``[0-9]`` classes): Python's ``\\d`` and ``str.isdigit`` accept non-ASCII
digits, which the contract forbids.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence
from typing import Final

__all__ = [
    "DEFAULT_MAX_SKEW",
    "MIN_SECRET_BYTES",
    "StampError",
    "Verifier",
    "canonical_string",
    "decode_tenant",
    "encode_tenant",
    "is_valid_tenant_name",
    "normalize_host",
    "sign",
]

VERSION: Final = "v1"
DEFAULT_MAX_SKEW: Final = 30
MIN_SECRET_BYTES: Final = 16
MAX_TENANT_BYTES: Final = 63

# Error codes (all HTTP 401).
STAMP_MISSING: Final = "stamp_missing"
STAMP_MALFORMED: Final = "stamp_malformed"
STAMP_UNSUPPORTED_VERSION: Final = "stamp_unsupported_version"
STAMP_UNKNOWN_KEY: Final = "stamp_unknown_key"
STAMP_BAD_SIGNATURE: Final = "stamp_bad_signature"
STAMP_EXPIRED: Final = "stamp_expired"

_OWS: Final = "[ \t]*"
_KID_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
_VERSION_HEAD_RE: Final = re.compile(r"v[0-9]+", re.ASCII)
_SIGNATURE_RE: Final = re.compile(
    "v1"
    + _OWS + ";" + _OWS + r"kid=(?P<kid>[A-Za-z0-9._-]{1,64})"
    + _OWS + ";" + _OWS + r"ts=(?P<ts>0|[1-9][0-9]{0,11})"
    + _OWS + ";" + _OWS + r"sig=(?P<sig>[0-9A-Fa-f]{64})",
    re.ASCII,
)
_WIRE_RE: Final = re.compile(r"(?:[A-Za-z0-9_-]|%[0-9A-F]{2})+", re.ASCII)
_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
)
_FORBIDDEN_NAME_BYTES: Final = frozenset(b"\"'\\;\x00\r\n")
_ASCII_LOWER: Final = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}

_MESSAGES: Final = {
    STAMP_MISSING: "the request carries no tenant stamp (X-Tenant / X-Tenant-Signature)",
    STAMP_MALFORMED: "the tenant stamp is malformed",
    STAMP_UNSUPPORTED_VERSION: "the tenant stamp uses an unsupported version",
    STAMP_UNKNOWN_KEY: "the tenant stamp is signed with an unknown key id",
    STAMP_BAD_SIGNATURE: "the tenant stamp's signature does not match the request",
    STAMP_EXPIRED: "the tenant stamp's timestamp is outside the allowed clock skew",
}


class StampError(Exception):
    """A request's stamp was rejected; ``code`` is the machine-readable reason.

    ``status`` is the HTTP status to answer with (401 for every stamp check).
    """

    def __init__(self, code: str, detail: str | None = None, status: int = 401) -> None:
        base = _MESSAGES.get(code, code)
        message = f"{base}: {detail}" if detail else base
        super().__init__(message)
        self.code: str = code
        self.status: int = status
        self.message: str = message

    def as_dict(self) -> dict[str, str]:
        """The JSON body to answer with: ``{"error": code, "message": ...}``."""
        return {"error": self.code, "message": self.message}


def _malformed(detail: str) -> StampError:
    return StampError(STAMP_MALFORMED, detail)


def is_valid_tenant_name(name: str) -> bool:
    """Whether ``name`` may be carried in a stamp (and is a valid schema name).

    1-63 bytes of UTF-8, none of ``" ' \\ ;`` NUL CR LF, and not starting with
    ``pg_`` in any ASCII case.
    """
    if not isinstance(name, str):
        return False
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    if not 1 <= len(raw) <= MAX_TENANT_BYTES:
        return False
    if any(b in _FORBIDDEN_NAME_BYTES for b in raw):
        return False
    return raw[:3].lower() != b"pg_"  # bytes.lower() is ASCII-only


def encode_tenant(name: str) -> str:
    """The canonical wire form of ``name``: unreserved ASCII bytes as is, every
    other UTF-8 byte as ``%XX`` (upper-case hex). Does not validate the name."""
    raw = name.encode("utf-8")
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in raw)


def decode_tenant(wire: str) -> str:
    """Decode a canonical wire form back to a valid tenant name.

    Raises :class:`StampError` (``stamp_malformed``) unless ``wire`` is exactly
    the canonical encoding of a valid tenant name.
    """
    if not _WIRE_RE.fullmatch(wire):
        raise _malformed("X-Tenant is not a percent-encoded tenant name")
    raw = bytearray()
    i = 0
    while i < len(wire):
        if wire[i] == "%":
            raw.append(int(wire[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(wire[i]))
            i += 1
    try:
        name = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("X-Tenant does not decode to UTF-8") from None
    if not is_valid_tenant_name(name):
        raise _malformed("X-Tenant is not a valid tenant name")
    if encode_tenant(name) != wire:
        raise _malformed("X-Tenant is not in canonical form")
    return name


def normalize_host(host: str) -> str:
    """The Host header value as the stamp signs it.

    Strip SP/HTAB; keep an IPv6 literal up to its ``]``, else drop a ``:port``
    whose port is ASCII digits (possibly none); remove one trailing dot; lower
    ASCII letters only.
    """
    h = host.strip(" \t")
    if h.startswith("["):
        end = h.find("]")
        if end >= 0:
            h = h[: end + 1]
    else:
        colon = h.rfind(":")
        if colon >= 0 and all("0" <= c <= "9" for c in h[colon + 1 :]):
            h = h[:colon]
    if h.endswith("."):
        h = h[:-1]
    return h.translate(_ASCII_LOWER)


def canonical_string(
    kid: str, ts: str, tenant_wire: str, method: str, host_normalized: str, path: str
) -> str:
    """The text that is MACed: seven fields joined by ``\\n``, no trailing newline."""
    return "\n".join((VERSION, kid, ts, tenant_wire, method, host_normalized, path))


def _mac(secret: str, canonical: str) -> bytes:
    # surrogateescape: header bytes that were not UTF-8 are MACed as received.
    return hmac.new(
        secret.encode("utf-8"), canonical.encode("utf-8", "surrogateescape"), hashlib.sha256
    ).digest()


def sign(
    key_id: str,
    secret: str,
    tenant_name: str,
    method: str,
    host: str,
    path: str,
    ts: int,
) -> tuple[str, str]:
    """Stamp a request; returns ``(X-Tenant value, X-Tenant-Signature value)``.

    For tests and tools: the gateway is the one that stamps real traffic.
    ``host`` is the raw Host header value (it is normalised here).
    """
    if not _KID_RE.fullmatch(key_id):
        raise ValueError(f"key id {key_id!r} must be 1-64 of [A-Za-z0-9._-]")
    if not is_valid_tenant_name(tenant_name):
        raise ValueError(f"{tenant_name!r} is not a valid tenant name")
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts <= 999_999_999_999:
        raise ValueError(f"ts must be an int of at most 12 digits, not {ts!r}")
    wire = encode_tenant(tenant_name)
    ts_text = str(ts)
    canonical = canonical_string(key_id, ts_text, wire, method, normalize_host(host), path)
    sig = _mac(secret, canonical).hex()
    return wire, f"{VERSION};kid={key_id};ts={ts_text};sig={sig}"


class Verifier:
    """Checks stamps against a set of keys ``{kid: secret}`` (several for rotation)."""

    def __init__(self, keys: Mapping[str, str], max_skew: int = DEFAULT_MAX_SKEW) -> None:
        if not isinstance(keys, Mapping) or not keys:
            raise ValueError("keys must be a non-empty mapping of key id to secret")
        checked: dict[str, bytes] = {}
        for kid, secret in keys.items():
            if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
                raise ValueError(f"key id {kid!r} must be 1-64 of [A-Za-z0-9._-]")
            if not isinstance(secret, str):
                raise ValueError(f"the secret of key {kid!r} must be a str")
            raw = secret.encode("utf-8")
            if len(raw) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"the secret of key {kid!r} is {len(raw)} bytes; "
                    f"at least {MIN_SECRET_BYTES} are required"
                )
            checked[kid] = raw
        if isinstance(max_skew, bool) or not isinstance(max_skew, int) or max_skew < 0:
            raise ValueError(f"max_skew must be a non-negative int, not {max_skew!r}")
        self._keys: dict[str, bytes] = checked
        self.max_skew: int = max_skew

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def verify(
        self,
        tenant_values: Sequence[str],
        signature_values: Sequence[str],
        method: str,
        host: str,
        path: str,
        now: int | None = None,
    ) -> str:
        """Return the stamped tenant name, or raise :class:`StampError`.

        ``tenant_values`` / ``signature_values`` are every value of the two
        headers; ``host`` is the raw Host value ("" if absent); ``path`` the raw
        path (percent-encoding kept, no query); ``method`` as sent.
        """
        # 1. Presence.
        if not tenant_values and not signature_values:
            raise StampError(STAMP_MISSING)
        if len(tenant_values) != 1 or len(signature_values) != 1:
            raise _malformed(
                f"expected exactly one X-Tenant and one X-Tenant-Signature, got "
                f"{len(tenant_values)} and {len(signature_values)}"
            )
        s = signature_values[0]
        t = tenant_values[0]

        # 2. Version.
        head = s.split(";", 1)[0].strip(" \t")
        if head != VERSION:
            if _VERSION_HEAD_RE.fullmatch(head):
                raise StampError(STAMP_UNSUPPORTED_VERSION, f"{head!r} (this verifier knows v1)")
            raise _malformed("X-Tenant-Signature does not start with a version")

        # 3. Signature grammar.
        m = _SIGNATURE_RE.fullmatch(s)
        if m is None:
            raise _malformed("X-Tenant-Signature is not 'v1;kid=...;ts=...;sig=<64 hex>'")
        kid, ts_text, sig_hex = m.group("kid"), m.group("ts"), m.group("sig")

        # 4. Tenant wire form.
        name = decode_tenant(t)

        # 5. Key.
        secret = self._keys.get(kid)
        if secret is None:
            raise StampError(STAMP_UNKNOWN_KEY, repr(kid))

        # 6. MAC.
        canonical = canonical_string(kid, ts_text, t, method, normalize_host(host), path)
        expected = hmac.new(
            secret, canonical.encode("utf-8", "surrogateescape"), hashlib.sha256
        ).digest()
        if not hmac.compare_digest(expected, bytes.fromhex(sig_hex)):
            raise StampError(STAMP_BAD_SIGNATURE)

        # 7. Freshness (after the MAC, so a forged stamp never learns the clock).
        current = int(time.time()) if now is None else now
        if abs(current - int(ts_text)) > self.max_skew:
            raise StampError(STAMP_EXPIRED, f"ts={ts_text}, now={current}, max skew {self.max_skew}s")
        return name
