"""Attestation of a VM guest: is its quote report signed by a trusted key, for a measurement we allow,
answering the nonce the platform issued, and fresh? Pure functions; the caller keeps the history.

A quote is `{"report": {...}, "signature": "<base64 Ed25519 signature>"}`. The signature covers the
report's canonical JSON (keys sorted, no spaces, UTF-8). The report names `key_id` (which trust root
signed), `measurement` (hex digest of what booted), `nonce` (the one the platform issued for this
attestation) and `issued_at` (ISO 8601 with a time zone).

Trust roots come as `key_id=<base64 of the 32-byte raw Ed25519 public key>`, comma-separated
(VM_ATTESTATION_TRUST_ROOTS); allowed measurements as hex digests, comma-separated
(VM_ATTESTATION_MEASUREMENTS).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

Outcome = Literal["trusted", "untrusted", "stale", "pending"]
# A clock this far ahead of ours is tolerated; beyond it a report "from the future" is not fresh.
CLOCK_SKEW = timedelta(seconds=30)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str

    @property
    def note(self) -> str:
        """The policy note of this verdict, e.g. `vm:attestation:untrusted:signature`."""
        return f"vm:attestation:{self.outcome}" + (f":{self.reason}" if self.outcome != "trusted" else "")


def parse_trust_roots(value: str) -> dict[str, Ed25519PublicKey]:
    """`id=base64key,...` into keys by id; ValueError naming the entry that is wrong."""
    roots: dict[str, Ed25519PublicKey] = {}
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        key_id, sep, encoded = entry.partition("=")
        if not sep or not key_id.strip():
            raise ValueError(f"trust root {entry[:40]!r} must look like key_id=<base64 Ed25519 public key>")
        try:
            raw = base64.b64decode(encoded.strip(), validate=True)
            roots[key_id.strip()] = Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, ValueError):
            raise ValueError(f"trust root {key_id.strip()!r} is not a base64 32-byte Ed25519 public key") from None
    return roots


def parse_measurements(value: str) -> frozenset[str]:
    found = set()
    for item in (m.strip().lower() for m in value.split(",")):
        if not item:
            continue
        if len(item) not in (64, 96, 128) or any(c not in "0123456789abcdef" for c in item):
            raise ValueError(f"measurement {item[:20]!r}... must be a hex SHA-256/384/512 digest")
        found.add(item)
    return frozenset(found)


def canonical(report: dict[str, Any]) -> bytes:
    return json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def verify(
    quote: dict[str, Any] | None,
    *,
    roots: dict[str, Ed25519PublicKey],
    measurements: frozenset[str],
    nonce: str | None,
    max_age: timedelta,
    now: datetime,
) -> Verdict:
    """The posture a quote gives. No quote yet (or no nonce issued yet): pending."""
    if quote is None or nonce is None:
        return Verdict("pending", "no-quote")
    report = quote.get("report")
    signature = quote.get("signature")
    if not isinstance(report, dict) or not isinstance(signature, str):
        return Verdict("untrusted", "malformed")
    key = roots.get(str(report.get("key_id")))
    if key is None:
        return Verdict("untrusted", "unknown-key")
    try:
        key.verify(base64.b64decode(signature, validate=True), canonical(report))
    except (InvalidSignature, binascii.Error, ValueError):
        return Verdict("untrusted", "signature")
    if not isinstance(report.get("nonce"), str) or not hmac.compare_digest(report["nonce"], nonce):
        return Verdict("untrusted", "nonce")
    if str(report.get("measurement", "")).lower() not in measurements:
        return Verdict("untrusted", "measurement")
    try:
        issued = datetime.fromisoformat(str(report.get("issued_at")))
    except ValueError:
        return Verdict("untrusted", "malformed")
    if issued.tzinfo is None:
        return Verdict("untrusted", "malformed")
    if issued > now + CLOCK_SKEW or now - issued > max_age:
        return Verdict("stale", "age")
    return Verdict("trusted", "verified")


def sign(report: dict[str, Any], private_key: Any) -> dict[str, Any]:
    """A quote over `report` (what a guest's attestation agent produces; tests and tools use it)."""
    return {"report": report, "signature": base64.b64encode(private_key.sign(canonical(report))).decode()}


def now_utc() -> datetime:
    return datetime.now(UTC)
