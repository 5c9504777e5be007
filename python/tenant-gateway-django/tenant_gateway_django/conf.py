"""Read and validate the ``TENANT_GATEWAY`` setting.

This module's one job: turn the raw settings dict into a checked
:class:`GatewaySettings`, or raise ``ImproperlyConfigured`` naming the bad key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured

from .stamp import DEFAULT_MAX_SKEW, MIN_SECRET_BYTES

__all__ = ["GatewaySettings", "load_settings", "parse_settings"]

SETTING_NAME: Final = "TENANT_GATEWAY"
_KID_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
_ALLOWED: Final = frozenset({"KEYS", "MAX_SKEW", "HEALTH_PATH", "ACTIVE_FIELD"})
_DEFAULT_HEALTH_PATH: Final = "/healthz"


@dataclass(frozen=True)
class GatewaySettings:
    """The validated ``TENANT_GATEWAY`` setting."""

    keys: Mapping[str, str] = field(repr=False)
    max_skew: int = DEFAULT_MAX_SKEW
    health_path: str | None = _DEFAULT_HEALTH_PATH
    active_field: str | None = None


def _bad(key: str, problem: str) -> ImproperlyConfigured:
    sep = "" if problem.startswith("[") else " "
    return ImproperlyConfigured(f"{SETTING_NAME}[{key!r}]{sep}{problem}")


def parse_settings(raw: Any) -> GatewaySettings:
    """Validate a ``TENANT_GATEWAY`` dict; raises ``ImproperlyConfigured``."""
    if raw is None:
        raise ImproperlyConfigured(
            f"{SETTING_NAME} is not set: add TENANT_GATEWAY = {{'KEYS': {{'k1': '<secret>'}}}} "
            "to your settings"
        )
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(f"{SETTING_NAME} must be a dict, not {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _ALLOWED)
    if unknown:
        raise ImproperlyConfigured(
            f"{SETTING_NAME} has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(_ALLOWED))}"
        )

    keys = raw.get("KEYS")
    if not isinstance(keys, Mapping) or not keys:
        raise _bad("KEYS", "must be a non-empty dict of key id to secret, e.g. {'k1': '<secret>'}")
    checked: dict[str, str] = {}
    for kid, secret in keys.items():
        if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
            raise _bad("KEYS", f"has key id {kid!r}; a key id is 1-64 of [A-Za-z0-9._-]")
        if not isinstance(secret, str):
            raise _bad("KEYS", f"[{kid!r}] must be a str secret, not {type(secret).__name__}")
        size = len(secret.encode("utf-8"))
        if size < MIN_SECRET_BYTES:
            raise _bad(
                "KEYS",
                f"[{kid!r}] is {size} bytes long; secrets must be at least {MIN_SECRET_BYTES} bytes",
            )
        checked[kid] = secret

    max_skew = raw.get("MAX_SKEW", DEFAULT_MAX_SKEW)
    if isinstance(max_skew, bool) or not isinstance(max_skew, int) or max_skew < 0:
        raise _bad("MAX_SKEW", f"must be a non-negative int (seconds), not {max_skew!r}")

    health_path = raw.get("HEALTH_PATH", _DEFAULT_HEALTH_PATH)
    if health_path is not None and (
        not isinstance(health_path, str) or not health_path.startswith("/")
    ):
        raise _bad("HEALTH_PATH", f"must be None or a path starting with '/', not {health_path!r}")

    active_field = raw.get("ACTIVE_FIELD")
    if active_field is not None and (not isinstance(active_field, str) or not active_field):
        raise _bad("ACTIVE_FIELD", f"must be None or a field name, not {active_field!r}")

    return GatewaySettings(
        keys=checked, max_skew=max_skew, health_path=health_path, active_field=active_field
    )


def load_settings() -> GatewaySettings:
    """Validate ``settings.TENANT_GATEWAY`` of the running Django project."""
    from django.conf import settings

    return parse_settings(getattr(settings, SETTING_NAME, None))
