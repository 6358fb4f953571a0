"""The attestation verifier: each way a quote can fail gives its own posture and note."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core.attestation import parse_measurements, parse_trust_roots, sign, verify

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
GOOD = "a" * 64
KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


def public(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


ROOTS = parse_trust_roots(f"root-1={public(KEY)}")
MEASUREMENTS = parse_measurements(f"{GOOD},{'b' * 64}")


def report(**changes: object) -> dict[str, object]:
    return {"key_id": "root-1", "measurement": GOOD, "nonce": "n-1", "issued_at": NOW.isoformat()} | changes


def check(quote: dict[str, object] | None, nonce: str | None = "n-1", now: datetime = NOW) -> tuple[str, str]:
    verdict = verify(quote, roots=ROOTS, measurements=MEASUREMENTS, nonce=nonce, max_age=timedelta(minutes=5), now=now)
    return verdict.outcome, verdict.note


def test_a_signed_fresh_quote_for_an_allowed_measurement_and_our_nonce_is_trusted() -> None:
    assert check(sign(report(), KEY)) == ("trusted", "vm:attestation:trusted")


@pytest.mark.parametrize(
    ("quote", "expected"),
    [
        (sign(report(), OTHER), ("untrusted", "vm:attestation:untrusted:signature")),
        (sign(report(key_id="root-9"), KEY), ("untrusted", "vm:attestation:untrusted:unknown-key")),
        (sign(report(measurement="c" * 64), KEY), ("untrusted", "vm:attestation:untrusted:measurement")),
        (sign(report(nonce="n-0"), KEY), ("untrusted", "vm:attestation:untrusted:nonce")),
        (sign(report(issued_at=(NOW - timedelta(minutes=6)).isoformat()), KEY), ("stale", "vm:attestation:stale:age")),
        (sign(report(issued_at=(NOW + timedelta(minutes=2)).isoformat()), KEY), ("stale", "vm:attestation:stale:age")),
        (sign(report(issued_at="2026-12-03T12:00:00"), KEY), ("untrusted", "vm:attestation:untrusted:malformed")),
        ({"report": "x", "signature": "y"}, ("untrusted", "vm:attestation:untrusted:malformed")),
    ],
)
def test_every_failure_has_its_own_posture(quote: dict[str, object], expected: tuple[str, str]) -> None:
    assert check(quote) == expected


def test_a_report_changed_after_signing_fails_its_signature() -> None:
    quote = sign(report(), KEY)
    quote["report"] = report(measurement="b" * 64)  # allowed, but not what was signed
    assert check(quote)[0] == "untrusted" and check(quote)[1].endswith(":signature")


def test_no_quote_or_no_nonce_yet_is_pending() -> None:
    assert check(None) == ("pending", "vm:attestation:pending:no-quote")
    assert check(sign(report(), KEY), nonce=None)[0] == "pending"


def test_bad_settings_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="key_id="):
        parse_trust_roots("nokey")
    with pytest.raises(ValueError, match="Ed25519"):
        parse_trust_roots("r=bm90IGEga2V5")
    with pytest.raises(ValueError, match="hex"):
        parse_measurements("xyz")
