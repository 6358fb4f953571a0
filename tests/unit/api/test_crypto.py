"""Sealing server config env at rest: round trip, key rotation, wrong keys, env written in clear."""

from __future__ import annotations

import json

import pytest

from core.crypto import EnvCipher, SecretsKeyError, env_names, is_sealed

OLD, NEW = "o" * 40, "n" * 40
ENV = {"API_TOKEN": "s3cr3t-value", "REGION": "eu-north-1"}


def test_sealed_env_hides_values_but_keeps_names() -> None:
    cipher = EnvCipher([OLD])
    sealed = cipher.seal(ENV)
    assert is_sealed(sealed) and "s3cr3t-value" not in json.dumps(sealed)
    assert env_names(sealed) == ["API_TOKEN", "REGION"]
    assert cipher.open(sealed) == ENV
    # Sealing twice gives different ciphertexts (random IV), both opening to the same env.
    assert cipher.seal(ENV)["sealed"] != sealed["sealed"] and cipher.open(cipher.seal(ENV)) == ENV


def test_a_tampered_or_foreign_envelope_is_refused_with_advice() -> None:
    sealed = EnvCipher([OLD]).seal(ENV)
    with pytest.raises(SecretsKeyError, match="SECRETS_KEY=new,old"):
        EnvCipher([NEW]).open(sealed)
    tampered = dict(sealed, sealed=sealed["sealed"][:-4] + "AAAA")
    with pytest.raises(SecretsKeyError):
        EnvCipher([OLD]).open(tampered)


def test_rotation_new_key_first_opens_old_and_reseals_with_new() -> None:
    old_sealed = EnvCipher([OLD]).seal(ENV)
    rotating = EnvCipher([NEW, OLD])
    assert rotating.open(old_sealed) == ENV
    resealed = rotating.reseal(old_sealed)
    assert resealed is not None and EnvCipher([NEW]).open(resealed) == ENV
    assert rotating.reseal(resealed) is None  # already under the primary key: nothing to rewrite


def test_env_written_in_clear_still_opens_and_gets_sealed() -> None:
    cipher = EnvCipher([NEW])
    assert cipher.open(ENV) == ENV and env_names(ENV) == ["API_TOKEN", "REGION"]
    sealed = cipher.reseal(ENV)
    assert sealed is not None and is_sealed(sealed) and cipher.open(sealed) == ENV
    assert cipher.open(None) == {} and cipher.reseal({}) is None


def test_single_secrets_seal_open_rotate_and_accept_clear_text() -> None:
    old, new = "o" * 40, "n" * 40
    secret = "a1" * 32
    stored = EnvCipher([old]).seal_text(secret)
    assert stored.startswith("fernet:") and secret not in stored
    assert EnvCipher([old]).open_text(stored) == secret
    assert EnvCipher([old]).reseal_text(stored) is None  # already under the primary key
    with pytest.raises(SecretsKeyError, match="SECRETS_KEY=new,old"):
        EnvCipher([new]).open_text(stored)
    rotated = EnvCipher([new, old]).reseal_text(stored)
    assert rotated is not None and EnvCipher([new]).open_text(rotated) == secret
    # Written in clear by an older version: still usable, and sealed by a reseal.
    assert EnvCipher([old]).open_text(secret) == secret
    sealed = EnvCipher([old]).reseal_text(secret)
    assert sealed is not None and EnvCipher([old]).open_text(sealed) == secret
