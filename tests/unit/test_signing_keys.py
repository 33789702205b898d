"""Signing keys: files and modes, kids, JWKS read by an independent verifier, rotation and retirement."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.signing_keys import KeyFileError, KeyRing, SigningKey
from llama_direct.keys import PublicKeySet, thumbprint
from llama_direct.redaction import REDACTED, redact
from llama_direct.refusals import TokenExpired, UnknownKey
from llama_direct.tokens import LEEWAY_SECONDS, MAX_TTL_SECONDS, Grant, mint, verify

NOW = 1_700_000_000.0
GRANT = Grant(routes=(("POST", "/v1/chat/completions"),), model="smollm2", max_tokens=64)
ALGORITHMS = ["EdDSA", "ES256"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def loaded(keys_dir: Path, algorithm: str = "EdDSA", now: float = NOW, **kwargs: Any) -> KeyRing:
    ring = KeyRing(keys_dir, algorithm, **kwargs)
    ring.load_or_create(now)
    return ring


def issue(key: SigningKey, now: float, ttl: int = 30) -> str:
    return mint(key, issuer="b", audience="g", subject="alice", scope="chat", grant=GRANT, now=now,
                ttl=ttl).token


def check(token: str, keys: PublicKeySet, now: float) -> str:
    return verify(token, keys=keys, audience="g", issuer="b", now=now).sub


def state(keys_dir: Path) -> dict[str, Any]:
    return json.loads((keys_dir / "state.json").read_text())


def write_pem(path: Path, private_key: object, file_mode: int = 0o600) -> str:
    pem = private_key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path.write_text(pem)
    path.chmod(file_mode)
    return pem


# --- files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_first_load_creates_one_key_file_0600_in_a_0700_dir(tmp_path: Path, algorithm: str) -> None:
    keys_dir = tmp_path / "data" / "keys"
    ring = loaded(keys_dir, algorithm)
    assert ring.current.algorithm == algorithm
    assert mode(keys_dir) == 0o700
    assert sorted(p.name for p in keys_dir.iterdir()) == sorted([f"{ring.current.kid}.pem", "state.json"])
    assert mode(keys_dir / f"{ring.current.kid}.pem") == 0o600
    assert mode(keys_dir / "state.json") == 0o600
    assert state(keys_dir) == {"current": ring.current.kid, "since": NOW, "retired": {}}
    assert (keys_dir / f"{ring.current.kid}.pem").read_text() == ring.current.to_pem()


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_modes_hold_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        ring = loaded(tmp_path / "keys")
    finally:
        os.umask(previous)
    assert mode(tmp_path / "keys") == 0o700
    assert mode(tmp_path / "keys" / f"{ring.current.kid}.pem") == 0o600
    assert mode(tmp_path / "keys" / "state.json") == 0o600


def test_key_files_are_created_0600_never_wider_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[tuple[str, int]] = []
    real_open = os.open

    def spy(path: Any, flags: int, file_mode: int = 0o777, **kwargs: Any) -> int:
        if flags & os.O_CREAT:
            created.append((Path(path).name, file_mode))
            assert flags & os.O_EXCL and flags & os.O_NOFOLLOW
        return real_open(path, flags, file_mode, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    ring = loaded(tmp_path / "keys")
    ring.rotate(NOW + 1)
    assert {name for name, _ in created} >= {f".{ring.current.kid}.pem.tmp", ".state.json.tmp"}
    assert {file_mode for _, file_mode in created} == {0o600}


def test_an_existing_dir_is_narrowed_to_0700(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o755)
    keys_dir.chmod(0o755)
    loaded(keys_dir)
    assert mode(keys_dir) == 0o700


def test_the_state_file_holds_no_secret(tmp_path: Path) -> None:
    ring = loaded(tmp_path / "keys")
    ring.rotate(NOW + 1)
    text = (tmp_path / "keys" / "state.json").read_text()
    assert "PRIVATE" not in text
    assert not any(line in text for line in ring.current.to_pem().splitlines()[1:-1])


def test_a_second_load_finds_the_same_key(tmp_path: Path) -> None:
    first = loaded(tmp_path / "keys")
    second = loaded(tmp_path / "keys", now=NOW + 10)
    assert second.current.kid == first.current.kid
    assert second.current.to_pem() == first.current.to_pem()
    assert len(list((tmp_path / "keys").glob("*.pem"))) == 1


def test_a_key_file_that_others_can_read_is_refused_not_narrowed(tmp_path: Path) -> None:
    """Issue 14 replaces the old narrowing: a key others could read may already be known."""
    ring = loaded(tmp_path / "keys")
    path = tmp_path / "keys" / f"{ring.current.kid}.pem"
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600") as caught:
        loaded(tmp_path / "keys")
    assert "\n" not in str(caught.value) and str(tmp_path) not in str(caught.value)
    assert mode(path) == 0o644


def test_a_file_holding_another_key_than_its_name_is_refused(tmp_path: Path) -> None:
    ring = loaded(tmp_path / "keys")
    write_pem(tmp_path / "keys" / f"{ring.current.kid}.pem", Ed25519PrivateKey.generate())
    with pytest.raises(KeyFileError, match="does not hold the key its name says"):
        loaded(tmp_path / "keys")


@pytest.mark.parametrize(
    "content",
    [
        "{",
        "[]",
        '{"current": 5, "retired": {}}',
        '{"current": "../../etc/passwd", "retired": {}}',
        '{"current": "abc", "retired": {"../x": 1}}',
        '{"current": "abc", "retired": {"def": "soon"}}',
        '{"current": "abc"}',
    ],
)
def test_a_damaged_state_file_is_refused_without_echoing_it(tmp_path: Path, content: str) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "state.json").write_text(content)
    with pytest.raises(KeyFileError) as caught:
        loaded(keys_dir)
    assert str(caught.value) == "the key state file is damaged"


def test_a_lost_current_key_file_is_replaced(tmp_path: Path) -> None:
    first = loaded(tmp_path / "keys")
    (tmp_path / "keys" / f"{first.current.kid}.pem").unlink()
    second = loaded(tmp_path / "keys")
    assert second.current.kid != first.current.kid
    assert [k["kid"] for k in second.jwks(NOW)["keys"]] == [second.current.kid]


def test_changing_the_algorithm_rotates_and_keeps_the_old_key_published(tmp_path: Path) -> None:
    ed = loaded(tmp_path / "keys", "EdDSA")
    token = issue(ed.current, NOW)
    es = loaded(tmp_path / "keys", "ES256", now=NOW + 1)
    assert es.current.algorithm == "ES256"
    assert [(k["kid"], k["alg"]) for k in es.jwks(NOW + 1)["keys"]] == [
        (es.current.kid, "ES256"), (ed.current.kid, "EdDSA"),
    ]
    assert check(token, es.public_keyset(NOW + 2), NOW + 2) == "alice"


def test_the_ring_must_be_loaded_before_use(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="load_or_create"):
        _ = KeyRing(tmp_path / "keys").current


@pytest.mark.parametrize(("algorithm", "max_ttl"), [("HS256", 300), ("none", 300), ("EdDSA", 301), ("ES256", 0)])
def test_the_ring_refuses_bad_settings(tmp_path: Path, algorithm: str, max_ttl: int) -> None:
    with pytest.raises(ValueError):
        KeyRing(tmp_path, algorithm, max_ttl)


# --- kids and JWKS ------------------------------------------------------------------------------------------


def test_thumbprint_matches_rfc_8037_example() -> None:
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_kid_is_the_thumbprint_of_the_published_key(algorithm: str) -> None:
    key = SigningKey.generate(algorithm)
    members = {name: value for name, value in key.public_jwk.items() if name in ("crv", "kty", "x", "y")}
    assert key.kid == thumbprint(members)
    assert SigningKey.from_private_key(key.private_key).kid == key.kid


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_jwks_publishes_only_public_members(tmp_path: Path, algorithm: str) -> None:
    ring = loaded(tmp_path / "keys", algorithm)
    (jwk,) = ring.jwks(NOW)["keys"]
    expected = {"kid", "alg", "use", "kty", "crv", "x"} | ({"y"} if algorithm == "ES256" else set())
    assert set(jwk) == expected
    assert (jwk["kid"], jwk["alg"], jwk["use"]) == (ring.current.kid, algorithm, "sig")
    assert (jwk["kty"], jwk["crv"]) == {"EdDSA": ("OKP", "Ed25519"), "ES256": ("EC", "P-256")}[algorithm]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_an_independent_verifier_checks_a_minted_token_with_the_jwks(tmp_path: Path, algorithm: str) -> None:
    now = time.time()
    ring = loaded(tmp_path / "keys", algorithm, now=now)
    token = issue(ring.current, now)
    jwks = json.loads(json.dumps(ring.jwks(now)))
    pyjwk = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(token, key=pyjwk, algorithms=[algorithm], audience="g", issuer="b")
    assert (claims["sub"], claims["scope"], claims["grant"]["model"]) == ("alice", "chat", "smollm2")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_gate_reads_the_jwks_back(tmp_path: Path, algorithm: str) -> None:
    ring = loaded(tmp_path / "keys", algorithm)
    keys = PublicKeySet.from_jwks(json.loads(json.dumps(ring.jwks(NOW))))
    assert list(keys.keys) == [ring.current.kid]
    assert check(issue(ring.current, NOW), keys, NOW) == "alice"


def test_from_jwks_skips_keys_of_other_kinds() -> None:
    ours = SigningKey.generate("EdDSA")
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 2048).public_key()))
    jwks = {"keys": [
        rsa_jwk | {"kid": "rsa", "alg": "RS256"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
        dict(SigningKey.generate("ES256").public_jwk) | {"use": "enc"},
        dict(SigningKey.generate("ES256").public_jwk) | {"alg": "ES384"},
        dict(ours.public_jwk),
    ]}
    assert list(PublicKeySet.from_jwks(jwks).keys) == [ours.kid]


@pytest.mark.parametrize(
    "jwks",
    [
        [],
        {},
        {"keys": {}},
        {"keys": ["x"]},
        {"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "k", "x": "AAAA"}]},
        {"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "k"}]},
        {"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "x": "A" * 43}]},
        {"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "k", "x": "A" * 43, "y": "A" * 43}]},
    ],
)
def test_from_jwks_refuses_a_broken_key_of_its_own_kinds(jwks: Any) -> None:
    with pytest.raises(ValueError):
        PublicKeySet.from_jwks(jwks)


def test_from_jwks_refuses_a_kid_given_twice() -> None:
    jwk = dict(SigningKey.generate("EdDSA").public_jwk)
    with pytest.raises(ValueError, match="kid"):
        PublicKeySet.from_jwks({"keys": [jwk, jwk]})


def test_a_signing_key_does_not_show_its_private_half(tmp_path: Path) -> None:
    key = loaded(tmp_path / "keys").current
    body = "".join(key.to_pem().splitlines()[1:-1])
    assert body not in repr(key)
    assert "private_key" not in repr(key)


# --- rotation -----------------------------------------------------------------------------------------------


def test_rotation_keeps_the_old_key_until_its_tokens_expired(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    ring = loaded(keys_dir)
    old = ring.current
    token = issue(old, NOW, ttl=MAX_TTL_SECONDS)
    new = ring.rotate(NOW)
    assert ring.current == new and new.kid != old.kid
    assert [k["kid"] for k in ring.jwks(NOW)["keys"]] == [new.kid, old.kid]
    assert state(keys_dir) == {"current": new.kid, "since": NOW, "retired": {old.kid: NOW}}

    last_moment = NOW + MAX_TTL_SECONDS + LEEWAY_SECONDS - 0.001
    assert check(token, ring.public_keyset(last_moment), last_moment) == "alice"
    assert [k["kid"] for k in ring.jwks(last_moment)["keys"]] == [new.kid, old.kid]
    assert (keys_dir / f"{old.kid}.pem").exists()

    gone = NOW + MAX_TTL_SECONDS + LEEWAY_SECONDS
    with pytest.raises(TokenExpired):
        check(token, ring.public_keyset(last_moment), gone)
    assert [k["kid"] for k in ring.jwks(gone)["keys"]] == [new.kid]
    with pytest.raises(UnknownKey):
        check(token, ring.public_keyset(gone), gone)
    assert not (keys_dir / f"{old.kid}.pem").exists()
    assert state(keys_dir) == {"current": new.kid, "since": NOW, "retired": {}}


def test_a_new_key_signs_and_verifies_at_once(tmp_path: Path) -> None:
    ring = loaded(tmp_path / "keys")
    new = ring.rotate(NOW)
    assert check(issue(ring.current, NOW), ring.public_keyset(NOW), NOW) == "alice"
    assert mode(tmp_path / "keys" / f"{new.kid}.pem") == 0o600


def test_a_shorter_max_ttl_retires_sooner(tmp_path: Path) -> None:
    ring = loaded(tmp_path / "keys", max_ttl=60)
    old = ring.current.kid
    ring.rotate(NOW)
    assert ring.prune(NOW + 60 + LEEWAY_SECONDS - 1) == []
    assert ring.prune(NOW + 60 + LEEWAY_SECONDS) == [old]


def test_retired_keys_survive_a_restart_and_are_pruned_on_load(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    ring = loaded(keys_dir)
    first = ring.current.kid
    second = ring.rotate(NOW).kid
    third = ring.rotate(NOW + 100).kid
    assert [k["kid"] for k in ring.jwks(NOW + 100)["keys"]] == [third, first, second]

    again = loaded(keys_dir, now=NOW + 101)
    assert again.current.kid == third
    assert [k["kid"] for k in again.jwks(NOW + 101)["keys"]] == [third, first, second]

    later = loaded(keys_dir, now=NOW + MAX_TTL_SECONDS + LEEWAY_SECONDS)
    assert [k["kid"] for k in later.jwks(NOW + MAX_TTL_SECONDS + LEEWAY_SECONDS)["keys"]] == [third, second]
    assert sorted(p.name for p in keys_dir.glob("*.pem")) == sorted([f"{second}.pem", f"{third}.pem"])


def test_a_missing_retired_key_file_is_dropped(tmp_path: Path) -> None:
    ring = loaded(tmp_path / "keys")
    old = ring.current.kid
    ring.rotate(NOW)
    (tmp_path / "keys" / f"{old}.pem").unlink()
    again = loaded(tmp_path / "keys")
    assert [k["kid"] for k in again.jwks(NOW)["keys"]] == [ring.current.kid]


# --- configured key files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("private_key", "algorithm"),
    [(Ed25519PrivateKey.generate(), "EdDSA"), (ec.generate_private_key(ec.SECP256R1()), "ES256")],
)
def test_a_configured_pem_file_is_used_as_is(tmp_path: Path, private_key: Any, algorithm: str) -> None:
    path = tmp_path / "signing.pem"
    write_pem(path, private_key)
    ring = KeyRing.from_pem_file(path)
    ring.load_or_create(NOW)
    assert ring.current.algorithm == algorithm
    assert ring.current.kid == SigningKey.from_private_key(private_key).kid
    assert KeyRing.from_pem_file(path, algorithm).current.kid == ring.current.kid
    assert check(issue(ring.current, NOW), PublicKeySet.from_jwks(ring.jwks(NOW)), NOW) == "alice"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.pem"]


def test_a_configured_key_cannot_rotate(tmp_path: Path) -> None:
    write_pem(tmp_path / "signing.pem", Ed25519PrivateKey.generate())
    with pytest.raises(RuntimeError, match="replacing the file"):
        KeyRing.from_pem_file(tmp_path / "signing.pem").rotate(NOW)


def test_a_configured_key_of_another_algorithm_is_refused(tmp_path: Path) -> None:
    write_pem(tmp_path / "signing.pem", Ed25519PrivateKey.generate())
    with pytest.raises(KeyFileError, match="not a ES256 key"):
        KeyRing.from_pem_file(tmp_path / "signing.pem", "ES256")


def test_a_configured_key_that_others_can_read_is_refused(tmp_path: Path) -> None:
    write_pem(tmp_path / "signing.pem", Ed25519PrivateKey.generate(), 0o644)
    with pytest.raises(KeyFileError, match="chmod 600") as caught:
        KeyRing.from_pem_file(tmp_path / "signing.pem")
    assert str(tmp_path) not in str(caught.value)


@pytest.mark.parametrize(
    "pem",
    [
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase")),
        b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
        b"",
    ],
)
def test_a_configured_file_that_is_no_usable_key_is_refused(tmp_path: Path, pem: bytes) -> None:
    path = tmp_path / "signing.pem"
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(KeyFileError):
        KeyRing.from_pem_file(path)


# --- redaction ------------------------------------------------------------------------------------------------


def test_created_keys_are_registered_for_redaction(tmp_path: Path) -> None:
    ring = loaded(tmp_path / "keys")
    pem = ring.current.to_pem()
    body = pem.splitlines()[1]
    assert redact(f"oops: {pem}") == f"oops: {REDACTED}"
    assert redact(f"line {body} end") == f"line {REDACTED} end"
    rotated = ring.rotate(NOW).to_pem()
    assert redact(rotated) == REDACTED


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_loaded_keys_are_registered_for_redaction(tmp_path: Path, algorithm: str) -> None:
    private_key = Ed25519PrivateKey.generate() if algorithm == "EdDSA" else ec.generate_private_key(ec.SECP256R1())
    pem = write_pem(tmp_path / "signing.pem", private_key)
    KeyRing.from_pem_file(tmp_path / "signing.pem")
    assert redact(pem) == REDACTED
    lines = [line for line in pem.splitlines()[1:-1] if len(line) >= 16]
    assert lines
    for line in lines:
        assert redact(line) == REDACTED


# --- scheduled rotation: publish first, sign after ------------------------------------------------------


DAY = 86_400.0


def test_a_young_key_keeps_signing_and_nothing_is_staged(tmp_path: Path) -> None:
    ring = loaded(tmp_path / "keys")
    first = ring.current
    assert ring.advance(NOW + DAY - 1, max_age=DAY) == first
    assert [k["kid"] for k in ring.jwks(NOW + DAY - 1)["keys"]] == [first.kid]
    assert ring.advance(NOW + 10 * DAY, max_age=None) == first


def test_an_old_key_gets_a_successor_published_before_it_signs(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    ring = loaded(keys_dir, publish_delay=2.0)
    old = ring.current
    staged_at = NOW + DAY
    assert ring.advance(staged_at, max_age=DAY) == old  # staged, not signing yet
    kids = [k["kid"] for k in ring.jwks(staged_at)["keys"]]
    assert kids[0] == old.kid and len(kids) == 2
    new_kid = kids[1]
    assert new_kid in ring.public_keyset(staged_at).keys
    assert state(keys_dir)["next"] == {"kid": new_kid, "staged_at": staged_at}
    assert mode(keys_dir / f"{new_kid}.pem") == 0o600

    assert ring.advance(staged_at + 1.9, max_age=DAY) == old
    new = ring.advance(staged_at + 2.0, max_age=DAY)
    assert new.kid == new_kid
    assert [k["kid"] for k in ring.jwks(staged_at + 2.0)["keys"]] == [new_kid, old.kid]
    assert state(keys_dir) == {"current": new_kid, "since": staged_at + 2.0, "retired": {old.kid: staged_at + 2.0}}
    assert ring.advance(staged_at + 3.0, max_age=DAY) == new  # young again


def test_a_staged_key_survives_a_restart_and_still_waits_its_turn(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    ring = loaded(keys_dir, publish_delay=2.0)
    old = ring.current
    ring.advance(NOW + DAY, max_age=DAY)
    staged_kid = state(keys_dir)["next"]["kid"]

    again = loaded(keys_dir, now=NOW + DAY + 1, publish_delay=2.0)
    assert again.current.kid == old.kid
    assert [k["kid"] for k in again.jwks(NOW + DAY + 1)["keys"]] == [old.kid, staged_kid]
    assert again.advance(NOW + DAY + 2, max_age=DAY).kid == staged_kid


def test_the_age_of_the_signing_key_survives_a_restart(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    first = loaded(keys_dir).current
    again = loaded(keys_dir, now=NOW + DAY)
    again.advance(NOW + DAY, max_age=DAY)
    assert again.current.kid == first.kid and "next" in state(keys_dir)


def test_a_configured_key_file_is_never_rotated_on_schedule(tmp_path: Path) -> None:
    key = SigningKey.generate("EdDSA")
    path = tmp_path / "signing.pem"
    path.write_text(key.to_pem())
    path.chmod(0o600)
    ring = KeyRing.from_pem_file(path)
    assert ring.advance(NOW + 100 * DAY, max_age=DAY).kid == key.kid
    assert [p.name for p in tmp_path.iterdir()] == ["signing.pem"]


def test_a_key_staged_for_another_algorithm_is_deleted_not_kept(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    ring = loaded(keys_dir, "EdDSA")
    ring.advance(NOW + DAY, max_age=DAY)
    staged_kid = state(keys_dir)["next"]["kid"]
    again = loaded(keys_dir, "ES256", now=NOW + DAY + 1)
    assert again.current.algorithm == "ES256"
    assert not (keys_dir / f"{staged_kid}.pem").exists()
    assert staged_kid not in [k["kid"] for k in again.jwks(NOW + DAY + 1)["keys"]]
