"""The broker's signing keys: key pairs, their kids, files on disk, rotation and the public JWKS.

`<keys_dir>/<kid>.pem` (0600, in a 0700 dir) is the one place a private key may sit on disk; each
file is created 0600 from the start, never written first and narrowed after. `<keys_dir>/state.json`
holds no secret: which kid signs and since when, a staged next kid, and when each older key was
retired. A retired key stays in the JWKS until every token it signed has expired
(`retired_at + max_ttl + leeway`), then its file goes.

Scheduled rotation (`advance`) stages the next key first: it is in the JWKS for `publish_delay`
seconds (several of the gate's pulls) before anything is signed with it, so a gate never meets a
token whose key it has not been shown.

The kid is the key's RFC 7638 thumbprint, so it is stable, says nothing, and is checked against the
file it is read from.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llama_direct.keys import PublicKey, PublicKeySet, jwk_members, thumbprint
from llama_direct.redaction import register_secret
from llama_direct.tokens import ALGORITHMS, LEEWAY_SECONDS, MAX_TTL_SECONDS

PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey

STATE_FILE = "state.json"
DEFAULT_PUBLISH_DELAY = 2.0
"""Seconds a staged key is published before it signs: four of the gate's 0.5 s pulls."""
_KID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class KeyFileError(ValueError):
    """A key file or the state file cannot be used; the message names no path and quotes nothing."""


@dataclass(frozen=True)
class SigningKey:
    """A private key with its kid; never leaves the broker."""

    kid: str
    algorithm: str
    private_key: PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, algorithm: str = "EdDSA") -> SigningKey:
        if algorithm == "EdDSA":
            return cls.from_private_key(Ed25519PrivateKey.generate())
        if algorithm == "ES256":
            return cls.from_private_key(ec.generate_private_key(ec.SECP256R1()))
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}")

    @classmethod
    def from_private_key(cls, private_key: object, algorithm: str | None = None) -> SigningKey:
        """Wrap a key, naming it by its thumbprint; `algorithm`, when given, must fit the key."""
        found = _algorithm_of(private_key)
        if algorithm is not None and algorithm != found:
            raise KeyFileError(f"the signing key is not a {algorithm} key")
        key = cast(PrivateKey, private_key)
        return cls(kid=thumbprint(jwk_members(key.public_key())), algorithm=found, private_key=key)

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    @cached_property
    def public_jwk(self) -> Mapping[str, str]:
        """The key as published: RFC 7517 members plus `kid`, `alg` and `use`."""
        jwk = {**jwk_members(self.public_key), "kid": self.kid, "alg": self.algorithm, "use": "sig"}
        return MappingProxyType(jwk)

    def to_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")


@dataclass
class _RetiredKey:
    jwk: Mapping[str, str]
    public_key: PublicKey
    algorithm: str
    retired_at: float


class KeyRing:
    """The broker's keys: one current signer and the retired keys whose tokens may still be live."""

    def __init__(self, keys_dir: Path, algorithm: str = "EdDSA", max_ttl: int = MAX_TTL_SECONDS,
                 publish_delay: float = DEFAULT_PUBLISH_DELAY) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
        if not 1 <= max_ttl <= MAX_TTL_SECONDS:
            raise ValueError(f"max_ttl must be between 1 and {MAX_TTL_SECONDS} seconds")
        if publish_delay < 0:
            raise ValueError("publish_delay must not be negative")
        self._dir: Path | None = Path(keys_dir)
        self._algorithm = algorithm
        self._max_ttl = max_ttl
        self._publish_delay = publish_delay
        self._current: SigningKey | None = None
        self._since = 0.0
        self._next: tuple[SigningKey, float] | None = None
        self._retired: dict[str, _RetiredKey] = {}
        self.generation = 0
        """Counts the changes to what `jwks()` publishes, so the broker wakes the gate's long poll."""

    @classmethod
    def from_pem_file(cls, path: Path, algorithm: str | None = None,
                      max_ttl: int = MAX_TTL_SECONDS) -> KeyRing:
        """A ring around one configured key; it is rotated by replacing the file, so `rotate` refuses.

        Like ssh, a file that others may read is refused: the key may already be known.
        """
        fd = os.open(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as file:
            if os.fstat(fd).st_mode & 0o077:
                raise KeyFileError("the signing key file must be readable by its owner only (chmod 600)")
            pem = file.read()
        key = _load_pem(pem, algorithm)
        ring = cls(Path(path).parent, key.algorithm, max_ttl)
        ring._dir = None
        ring._current = key
        return ring

    @property
    def current(self) -> SigningKey:
        """The key that signs new tokens."""
        if self._current is None:
            raise RuntimeError("the key ring is not loaded: call load_or_create first")
        return self._current

    def load_or_create(self, now: float) -> None:
        """Load the keys from the keys dir, making a key when there is none of the configured algorithm."""
        if self._dir is None:
            return
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._dir, 0o700)
        current_kid, retired, since, staged = self._read_state()
        self._current = self._read_key(current_kid) if current_kid else None
        self._since = since if since is not None else now
        self._next = None
        if staged is not None:
            staged_key = self._read_key(staged[0])
            if staged_key is not None and staged_key.algorithm == self._algorithm:
                self._next = (staged_key, staged[1])
            else:  # staged for another algorithm: it never signed, so nothing needs its public half
                (self._dir / f"{staged[0]}.pem").unlink(missing_ok=True)
        self._retired = {}
        for kid, retired_at in retired.items():
            key = self._read_key(kid)
            if key is not None:
                self._retired[kid] = _RetiredKey(key.public_jwk, key.public_key, key.algorithm, retired_at)
        if self._current is None or self._current.algorithm != self._algorithm:
            self.rotate(now)
        self.prune(now)

    def rotate(self, now: float) -> SigningKey:
        """Make a new current key; the old one keeps verifying until its tokens have expired.

        The new key is on disk and in `jwks()` before anything is signed with it; a gate that has
        not pulled it yet fetches the JWKS again when it meets the unknown kid.
        """
        if self._dir is None:
            raise RuntimeError("a configured key file is rotated by replacing the file")
        new = self._generate()
        self._promote(new, now)
        return new

    def advance(self, now: float, max_age: float | None) -> SigningKey:
        """The scheduled rotation, driven by the caller's clock; returns the key that signs now.

        A current key older than `max_age` gets a staged successor, published at once; the successor
        signs only once it has been published for `publish_delay`. `max_age` None: no schedule (a
        successor staged before still takes over).
        """
        current = self.current
        if self._dir is None:
            return current
        if self._next is not None:
            staged, staged_at = self._next
            if now >= staged_at + self._publish_delay:
                self._promote(staged, now)
        elif max_age is not None and now - self._since >= max_age:
            self._next = (self._generate(), now)
            self._changed()
        return self.current

    def _generate(self) -> SigningKey:
        assert self._dir is not None
        new = SigningKey.generate(self._algorithm)
        self._write_private(self._dir / f"{new.kid}.pem", _register_pem(new.to_pem()).encode("ascii"))
        return new

    def _promote(self, new: SigningKey, now: float) -> None:
        old = self._current
        if old is not None:
            self._retired[old.kid] = _RetiredKey(old.public_jwk, old.public_key, old.algorithm, now)
        if self._next is not None and self._next[0].kid != new.kid:
            assert self._dir is not None
            (self._dir / f"{self._next[0].kid}.pem").unlink(missing_ok=True)
        self._current, self._since, self._next = new, now, None
        self._changed()

    def prune(self, now: float) -> list[str]:
        """Forget the retired keys whose tokens have all expired and delete their files; returns their kids."""
        window = self._max_ttl + LEEWAY_SECONDS
        gone = [kid for kid, key in self._retired.items() if now >= key.retired_at + window]
        if not gone:
            return gone
        assert self._dir is not None, "only a ring with a keys dir retires keys"
        for kid in gone:
            del self._retired[kid]
        self._changed()
        for kid in gone:
            (self._dir / f"{kid}.pem").unlink(missing_ok=True)
        return gone

    def _changed(self) -> None:
        """What `jwks()` publishes moved (staged, promoted, retired): on disk, and counted for the gate."""
        self.generation += 1
        self._write_state()

    def jwks(self, now: float) -> dict[str, Any]:
        """`{"keys": [...]}`: the current key first, then the retired keys still in their window."""
        self.prune(now)
        staged = [dict(self._next[0].public_jwk)] if self._next is not None else []
        return {"keys": [dict(self.current.public_jwk), *staged, *(dict(k.jwk) for k in self._retired.values())]}

    def public_keyset(self, now: float) -> PublicKeySet:
        self.prune(now)
        current = self.current
        keys: dict[str, tuple[str, PublicKey]] = {current.kid: (current.algorithm, current.public_key)}
        if self._next is not None:
            keys[self._next[0].kid] = (self._next[0].algorithm, self._next[0].public_key)
        keys.update((kid, (k.algorithm, k.public_key)) for kid, k in self._retired.items())
        return PublicKeySet(MappingProxyType(keys))

    def _read_state(self) -> tuple[str | None, dict[str, float], float | None, tuple[str, float] | None]:
        """(current kid, retired kids and when, since when current signs, staged kid and when)."""
        assert self._dir is not None
        try:
            state = json.loads((self._dir / STATE_FILE).read_bytes())
        except FileNotFoundError:
            return None, {}, None, None
        except ValueError:
            raise KeyFileError("the key state file is damaged") from None
        if not isinstance(state, dict):
            raise KeyFileError("the key state file is damaged")
        current, retired = state.get("current"), state.get("retired")
        since, staged = state.get("since"), state.get("next")
        valid = (
            isinstance(current, str) and _KID.fullmatch(current) is not None
            and isinstance(retired, dict)
            and all(_KID.fullmatch(kid) and isinstance(at, int | float) for kid, at in retired.items())
            and (since is None or isinstance(since, int | float))
            and (staged is None or (isinstance(staged, dict) and isinstance(staged.get("kid"), str)
                                    and _KID.fullmatch(staged["kid"]) is not None
                                    and isinstance(staged.get("staged_at"), int | float)))
        )
        if not valid:
            raise KeyFileError("the key state file is damaged")
        assert isinstance(current, str) and isinstance(retired, dict)  # what `valid` checked, for the type checker
        return current, retired, since, (staged["kid"], staged["staged_at"]) if staged else None

    def _write_state(self) -> None:
        assert self._dir is not None and self._current is not None
        retired = {kid: key.retired_at for kid, key in self._retired.items()}
        state: dict[str, Any] = {"current": self._current.kid, "since": self._since, "retired": retired}
        if self._next is not None:
            state["next"] = {"kid": self._next[0].kid, "staged_at": self._next[1]}
        self._write_private(self._dir / STATE_FILE, json.dumps(state, indent=2).encode())

    def _read_key(self, kid: str) -> SigningKey | None:
        """The key stored under `kid`, or None when its file is gone; it must be the key its name says."""
        assert self._dir is not None
        try:
            fd = os.open(self._dir / f"{kid}.pem", os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as file:
            if os.fstat(fd).st_mode & 0o077:
                raise KeyFileError("a signing key file in the keys dir is readable by others (chmod 600 it)")
            key = _load_pem(file.read(), None)
        if key.kid != kid:
            raise KeyFileError("a signing key file does not hold the key its name says")
        return key

    @staticmethod
    def _write_private(path: Path, data: bytes) -> None:
        """Write a file that is 0600 from its first byte, and appears whole or not at all."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(fd, 0o600)
            file.write(data)
            file.flush()
            os.fsync(fd)
        os.replace(tmp, path)


def _algorithm_of(private_key: object) -> str:
    if isinstance(private_key, Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(private_key.curve, ec.SECP256R1):
        return "ES256"
    raise KeyFileError("the signing key must be an Ed25519 or P-256 key")


def _load_pem(pem: bytes, algorithm: str | None) -> SigningKey:
    try:
        text = pem.decode("ascii")
        private_key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError("the signing key file is not an unencrypted Ed25519 or P-256 PEM key") from None
    _register_pem(text)
    return SigningKey.from_private_key(private_key, algorithm)


def _register_pem(pem: str) -> str:
    """Hand the PEM and each line of its body to the log filter, so a partial leak is scrubbed too."""
    register_secret(pem)
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    register_secret("".join(body))
    for line in body:
        if len(line) >= 16:
            register_secret(line)
    return pem
