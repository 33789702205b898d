"""The leak scan (scripts/leak_scan.py): first that it can find a planted secret, then a real run."""

from __future__ import annotations

import base64
import importlib.util
import json
import secrets
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from cryptography.hazmat.primitives import serialization

from broker.signing_keys import SigningKey

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "leak_scan.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("leak_scan", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["leak_scan"] = module
    spec.loader.exec_module(module)
    return module


leak_scan = _load()


def _places(*pieces: bytes) -> list[tuple[str, bytes]]:
    return [(f"place {n}", piece) for n, piece in enumerate(pieces)]


@pytest.mark.parametrize("prefix", [b"", b"x", b"xy", b"Authorization: Bearer "])
def test_a_master_key_is_found_raw_and_inside_base64_at_any_alignment(prefix: bytes) -> None:
    key = secrets.token_urlsafe(32)
    needles = leak_scan.master_key_needles(1, key)
    planted = [
        prefix + key.encode(),
        base64.b64encode(prefix + key.encode() + b"\n"),
        base64.urlsafe_b64encode(prefix + key.encode()),
        base64.b64encode(prefix + base64.urlsafe_b64decode(key + "=")),
        (prefix + key.encode()).hex().encode(),
    ]
    hits = leak_scan.search(needles, _places(*planted))
    assert sorted({hit.place for hit in hits}) == [f"place {n}" for n in range(len(planted))]
    assert all(hit.needle.startswith("master key #1 (") for hit in hits)
    assert leak_scan.search(needles, _places(secrets.token_urlsafe(32).encode(), b"Bearer [redacted]")) == []


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
def test_a_signing_key_is_found_as_pem_der_and_jwk_d(algorithm: str) -> None:
    key = SigningKey.generate(algorithm)
    pem = key.to_pem().encode()
    needles = leak_scan.signing_key_needles("k.pem", pem)
    der = key.private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    if algorithm == "EdDSA":
        scalar = key.private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                               serialization.NoEncryption())
    else:
        scalar = key.private_key.private_numbers().private_value.to_bytes(32, "big")
    jwk_d = base64.urlsafe_b64encode(scalar).rstrip(b"=")
    planted = [b"log: " + pem, b"\x00\x01" + der + b"\xff", json.dumps({"d": jwk_d.decode()}).encode(),
               base64.b64encode(b"ab" + der)]
    hits = leak_scan.search(needles, _places(*planted))
    assert sorted({hit.place for hit in hits}) == [f"place {n}" for n in range(len(planted))]
    other = SigningKey.generate(algorithm).to_pem().encode()
    assert leak_scan.search(needles, _places(other)) == []


def test_a_hit_is_reported_by_label_and_never_by_value() -> None:
    key = secrets.token_urlsafe(32)
    hits = leak_scan.search(leak_scan.master_key_needles(1, key), [("serve log", b"line one\nkey=" + key.encode())])
    text = leak_scan.report(hits, leak_scan.Haystacks(), ["1 master keys"], 2)
    assert "HIT: master key #1 (text) in serve log, line 2" in text
    assert text.endswith("FAIL")
    assert key not in text


@pytest.mark.real
@pytest.mark.timeout(420)
def test_the_leak_scan_of_a_real_stack_finds_nothing(llama_server_binary: Path, model_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--llama-server", str(llama_server_binary), "--timeout", "240"],
        capture_output=True, text=True, timeout=400, check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "leak scan: 2 master keys, 1 signing keys" in output
    assert "\nhits: 0\n" in output and output.rstrip().endswith("PASS")
    assert "the stream cut by kill -9 ended without [DONE]" in output
