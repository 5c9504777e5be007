"""The stamp contract: every shared vector, the helper tables, and sign()."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tenant_gateway_django.stamp import (
    StampError,
    Verifier,
    canonical_string,
    decode_tenant,
    encode_tenant,
    is_valid_tenant_name,
    normalize_host,
    sign,
)

VECTORS_PATH = Path(__file__).resolve().parents[3] / "stamp" / "vectors.json"
DATA: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
VECTORS: list[dict[str, Any]] = DATA["vectors"]
CANONICAL_SIG = re.compile(r"v1;kid=[A-Za-z0-9._-]+;ts=[0-9]+;sig=[0-9a-f]{64}", re.ASCII)


def _verifier() -> Verifier:
    return Verifier(DATA["keys"], DATA["max_skew"])


def _run(v: dict[str, Any]) -> dict[str, Any]:
    try:
        tenant = _verifier().verify(
            v["x_tenant"],
            v["x_tenant_signature"],
            v["method"],
            v["host"],
            v["path"],
            now=v.get("now", DATA["now"]),
        )
    except StampError as exc:
        assert exc.message and isinstance(exc.message, str)
        assert exc.as_dict() == {"error": exc.code, "message": exc.message}
        return {"error": exc.code, "status": exc.status}
    return {"tenant": tenant}


def test_vector_file_is_not_empty() -> None:
    assert len(VECTORS) >= 50
    assert any("tenant" in v["result"] for v in VECTORS)
    assert any("error" in v["result"] for v in VECTORS)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    assert _run(vector) == vector["result"]


POSITIVE = [v for v in VECTORS if "tenant" in v["result"]]


@pytest.mark.parametrize("vector", POSITIVE, ids=[v["name"] for v in POSITIVE])
def test_sign_reproduces_positive_vectors(vector: dict[str, Any]) -> None:
    sig = vector["x_tenant_signature"][0]
    kid = re.search(r"kid=([A-Za-z0-9._-]+)", sig, re.ASCII).group(1)  # type: ignore[union-attr]
    ts = int(re.search(r"ts=([0-9]+)", sig, re.ASCII).group(1))  # type: ignore[union-attr]
    tenant, signature = sign(
        kid,
        DATA["keys"][kid],
        vector["result"]["tenant"],
        vector["method"],
        vector["host"],
        vector["path"],
        ts,
    )
    assert tenant == vector["x_tenant"][0]
    if CANONICAL_SIG.fullmatch(sig):
        assert signature == sig
    else:  # spaces or upper-case hex: same MAC, other spelling
        assert signature.rsplit("=", 1)[1] == sig.rsplit("=", 1)[1].strip().lower()


def test_some_positive_vectors_are_canonical() -> None:
    assert sum(bool(CANONICAL_SIG.fullmatch(v["x_tenant_signature"][0])) for v in POSITIVE) >= 10


TENANT_REJECTS = [
    v
    for v in VECTORS
    if v["name"].startswith("tenant:") and CANONICAL_SIG.fullmatch(v["x_tenant_signature"][0])
]


@pytest.mark.parametrize("vector", TENANT_REJECTS, ids=[v["name"] for v in TENANT_REJECTS])
def test_rejected_tenants_carry_a_correct_mac(vector: dict[str, Any]) -> None:
    # These vectors are refused for the tenant value alone: their MAC is right.
    sig = vector["x_tenant_signature"][0]
    fields = dict(part.split("=", 1) for part in sig.split(";")[1:])
    canonical = canonical_string(
        fields["kid"],
        fields["ts"],
        vector["x_tenant"][0],
        vector["method"],
        normalize_host(vector["host"]),
        vector["path"],
    )
    mac = hmac.new(
        DATA["keys"][fields["kid"]].encode(), canonical.encode("utf-8"), hashlib.sha256
    ).hexdigest()
    assert mac == fields["sig"]


HOSTS = DATA["host_normalization"]


@pytest.mark.parametrize("case", HOSTS, ids=[ascii(h["in"]) for h in HOSTS])
def test_host_normalization(case: dict[str, str]) -> None:
    assert normalize_host(case["in"]) == case["out"]


@pytest.mark.parametrize(
    ("raw", "out"),
    [
        ("\tExample.COM\t", "example.com"),
        ("[::1", "[::1"),
        ("[::1]junk:80", "[::1]"),
        ("[::1].", "[::1]"),
        ("a:b:80", "a:b"),
        ("Ä.EXAMPLE", "Ä.example"),
        ("İ.example", "İ.example"),
        ("\u212a", "\u212a"),  # Kelvin sign: str.lower() would make it "k"
        (".", ""),
        (":", ""),
    ],
)
def test_host_normalization_extra(raw: str, out: str) -> None:
    assert normalize_host(raw) == out


ENCODINGS = DATA["tenant_encoding"]


@pytest.mark.parametrize("case", ENCODINGS, ids=[c["wire"] for c in ENCODINGS])
def test_tenant_encoding(case: dict[str, str]) -> None:
    assert encode_tenant(case["name"]) == case["wire"]
    assert decode_tenant(case["wire"]) == case["name"]
    assert is_valid_tenant_name(case["name"])


@pytest.mark.parametrize(
    "name",
    ["", "t" * 64, "é" * 32, "pg_x", "PG_x", "pG_", "a\"b", "a'b", "a\\b", "a;b", "a\x00b",
     "a\rb", "a\nb", "\udc80"],
)
def test_invalid_tenant_names(name: str) -> None:
    assert not is_valid_tenant_name(name)
    with pytest.raises(ValueError):
        sign("k1", DATA["keys"]["k1"], name, "GET", "h", "/", 1)


@pytest.mark.parametrize("name", ["a", "t" * 63, "é" * 31 + "x", "pg", "p_g", "xpg_", "a b", "a,b"])
def test_valid_tenant_names_round_trip(name: str) -> None:
    assert is_valid_tenant_name(name)
    assert decode_tenant(encode_tenant(name)) == name


@pytest.mark.parametrize(
    "wire",
    ["", "acme.eu", "Acme%2eEU", "%41cme", "acme%zz", "acme%2", "caf%E9", "a,b", "a%2Cb%2", "٣",
     "t" * 64, "pg_catalog", "a%22b", "a b", "%"],
)
def test_decode_rejects(wire: str) -> None:
    with pytest.raises(StampError) as info:
        decode_tenant(wire)
    assert info.value.code == "stamp_malformed"
    assert info.value.status == 401


def test_sign_round_trips_through_verify() -> None:
    v = _verifier()
    for name in ["ferrari", "acme-eu", "Acme.EU", "café", "big tenant", "public", "x:y/z"]:
        for host in ["Ferrari.MyApp.localhost:8080", "[::1]:8443", "", "a.example."]:
            t, s = sign("k2", DATA["keys"]["k2"], name, "DELETE", host, "/a%2Fb", 1_700_000_000)
            assert v.verify([t], [s], "DELETE", host, "/a%2Fb", now=1_700_000_000) == name
            with pytest.raises(StampError) as info:
                v.verify([t], [s], "DELETE", host, "/a%2fb", now=1_700_000_000)
            assert info.value.code == "stamp_bad_signature"


def test_sign_timestamp_bounds() -> None:
    t, s = sign("k1", DATA["keys"]["k1"], "a", "GET", "h", "/", 0)
    assert ";ts=0;" in s
    assert _verifier().verify([t], [s], "GET", "h", "/", now=30) == "a"
    t, s = sign("k1", DATA["keys"]["k1"], "a", "GET", "h", "/", 999_999_999_999)
    assert _verifier().verify([t], [s], "GET", "h", "/", now=999_999_999_999) == "a"
    for bad in [-1, 10**12, True]:
        with pytest.raises(ValueError):
            sign("k1", DATA["keys"]["k1"], "a", "GET", "h", "/", bad)  # type: ignore[arg-type]


def test_now_defaults_to_the_clock() -> None:
    import time

    t, s = sign("k1", DATA["keys"]["k1"], "a", "GET", "h", "/", int(time.time()))
    assert _verifier().verify([t], [s], "GET", "h", "/") == "a"
    t, s = sign("k1", DATA["keys"]["k1"], "a", "GET", "h", "/", 1)
    with pytest.raises(StampError) as info:
        _verifier().verify([t], [s], "GET", "h", "/")
    assert info.value.code == "stamp_expired"


def test_canonical_string() -> None:
    assert canonical_string("k1", "17", "a%2Eb", "GET", "h", "/p") == "v1\nk1\n17\na%2Eb\nGET\nh\n/p"


@pytest.mark.parametrize(
    ("signature", "code"),
    [
        (" v1;kid=k1;ts=1;sig=" + "0" * 64, "stamp_malformed"),  # head ok, grammar not
        ("v1;kid=k1;ts=1;sig=" + "0" * 64 + " ", "stamp_malformed"),
        ("v1;kid=k1;ts=1;sig=" + "0" * 64 + "\n", "stamp_malformed"),
        ("v1;kid=;ts=1;sig=" + "0" * 64, "stamp_malformed"),
        ("v1;kid=" + "k" * 65 + ";ts=1;sig=" + "0" * 64, "stamp_malformed"),
        ("v1;kid=" + "k" * 64 + ";ts=1;sig=" + "0" * 64, "stamp_unknown_key"),
        ("v1;kid=k9;ts=999999999999;sig=" + "0" * 64, "stamp_unknown_key"),
        ("\tv7 ;junk", "stamp_unsupported_version"),
        ("v\u0662;kid=k1", "stamp_malformed"),  # Arabic-Indic digit
        ("v1\u00a0;kid=k1;ts=1;sig=" + "0" * 64, "stamp_malformed"),  # NBSP is not OWS
        ("", "stamp_malformed"),
        ("v", "stamp_malformed"),
        ("v1;kid=k1;ts=1;sig=" + "\uff10" * 64, "stamp_malformed"),  # fullwidth digits
    ],
)
def test_signature_grammar_edges(signature: str, code: str) -> None:
    with pytest.raises(StampError) as info:
        _verifier().verify(["ferrari"], [signature], "GET", "h", "/", now=1)
    assert info.value.code == code


def test_check_order_version_before_tenant() -> None:
    with pytest.raises(StampError) as info:
        _verifier().verify(["acme.eu"], ["v2"], "GET", "h", "/", now=1)
    assert info.value.code == "stamp_unsupported_version"


def test_check_order_tenant_before_key() -> None:
    with pytest.raises(StampError) as info:
        _verifier().verify(["acme.eu"], ["v1;kid=k9;ts=1;sig=" + "0" * 64], "GET", "h", "/", now=1)
    assert info.value.code == "stamp_malformed"


@pytest.mark.parametrize(
    ("keys", "skew"),
    [
        ({}, 30),
        ({"k1": "short"}, 30),
        ({"k1": "x" * 15}, 30),
        ({"k/1": "x" * 16}, 30),
        ({"": "x" * 16}, 30),
        ({"k1": b"x" * 16}, 30),
        ({"k1": "x" * 16}, -1),
        ({"k1": "x" * 16}, True),
    ],
)
def test_verifier_refuses_bad_configuration(keys: dict[str, Any], skew: Any) -> None:
    with pytest.raises(ValueError):
        Verifier(keys, skew)


def test_secret_length_counts_bytes() -> None:
    Verifier({"k1": "é" * 8})  # 16 bytes, 8 characters
    with pytest.raises(ValueError, match="15 bytes"):
        Verifier({"k1": "é" * 7 + "x"})


def test_max_skew_zero() -> None:
    v = Verifier(DATA["keys"], 0)
    t, s = sign("k1", DATA["keys"]["k1"], "a", "GET", "h", "/", 100)
    assert v.verify([t], [s], "GET", "h", "/", now=100) == "a"
    with pytest.raises(StampError):
        v.verify([t], [s], "GET", "h", "/", now=101)


# The differential cases the Rust fuzz target made (stamp/differential.json):
# made-up and changed stamps, with what the Rust verifier answers for each.
DIFFERENTIAL: dict[str, Any] = json.loads(
    (VECTORS_PATH.parent / "differential.json").read_text(encoding="utf-8")
)


def _received(hex_bytes: str) -> str:
    """Header bytes as the middleware reads them (``_from_wsgi``): UTF-8, any
    other byte as a surrogate escape."""
    return bytes.fromhex(hex_bytes).decode("utf-8", "surrogateescape")


def test_differential_file_is_not_empty() -> None:
    assert len(DIFFERENTIAL["cases"]) >= 100


@pytest.mark.parametrize(
    "case", DIFFERENTIAL["cases"], ids=[str(i) for i in range(len(DIFFERENTIAL["cases"]))]
)
def test_differential_case_answers_as_the_rust_verifier(case: dict[str, Any]) -> None:
    verifier = Verifier(DIFFERENTIAL["keys"], DIFFERENTIAL["max_skew"])
    try:
        name = verifier.verify(
            [_received(t) for t in case["tenants"]],
            [_received(s) for s in case["signatures"]],
            case["method"],
            _received(case["host"]),
            _received(case["path"]),
            now=case["now"],
        )
        got = f"tenant:{name}"
    except StampError as exc:
        got = exc.code
    assert got == case["result"]
