"""The pure core of `--issuer-jwks`: the source's URL, the caps, what a key needs, the validator."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from tls_jwks import make_pki

from broker.signing_keys import SigningKey
from llama_launcher import cli
from llama_launcher.gate.config import GateConfig
from llama_launcher.gate.jwks_document import (
    MAX_JWKS_BYTES,
    MAX_JWKS_KEYS,
    NOT_MODIFIED,
    JwksError,
    JwksSource,
    check_head,
    check_sources,
    conditional_headers,
    own_issuers,
    read_answer,
    read_jwks,
)

ED = SigningKey.generate("EdDSA")
EC = SigningKey.generate("ES256")
JSON = {"content-type": "application/json"}
with tempfile.TemporaryDirectory() as _base:
    CA_PEM = make_pki(Path(_base)).ca_file.read_text()


def _body(*keys: Any) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def test_a_source_is_issuer_equals_an_https_url_and_logs_name_its_host_only() -> None:
    source = JwksSource.parse("broker-b=https://b.example:8443/.well-known/jwks.json?x=1")
    assert (source.issuer, source.host) == ("broker-b", "b.example:8443")
    assert JwksSource.parse("b=https://[::1]/jwks").host == "[::1]"
    assert JwksSource.parse("b=https://b.example/k=v").url == "https://b.example/k=v"


@pytest.mark.parametrize(("text", "words"), [
    ("broker-b=http://b.example/jwks", "only https://"),
    ("broker-b=HTTP://b.example/jwks", "only https://"),
    ("broker-b=ftp://b.example/jwks", "only https://"),
    ("broker-b", "expected ISSUER=https://"),
    ("=https://b.example/jwks", "expected ISSUER=https://"),
    ("broker b=https://b.example/jwks", "not an issuer name"),
    ("broker-b=https:///jwks", "names no host"),
    ("broker-b=https://user:pw@b.example/jwks", "credentials"),
    ("broker-b=https://b.example/jwks#frag", "credentials or a #fragment"),
    ("broker-b=https://b.example:99999/jwks", "not a URL"),
])
def test_a_bad_source_is_a_one_line_error(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words) as caught:
        JwksSource.parse(text)
    assert "\n" not in str(caught.value) and "pw" not in str(caught.value)


def test_a_source_names_an_accepted_issuer_not_the_own_broker_and_only_once() -> None:
    accepted = ("broker-a", "broker-b", "broker-c")
    b, c = JwksSource("broker-b", "https://b/j"), JwksSource("broker-c", "https://c/j")
    check_sources([b, c], accepted)
    with pytest.raises(ValueError, match="not one of the accepted --issuer names"):
        check_sources([JwksSource("broker-z", "https://z/j")], accepted)
    with pytest.raises(ValueError, match="this broker's own issuer"):
        check_sources([JwksSource("broker-a", "https://a/j")], accepted)
    with pytest.raises(ValueError, match="given twice"):
        check_sources([b, b], accepted)
    with pytest.raises(ValueError, match="at most 16"):
        check_sources([JwksSource(f"i{n}", "https://x/j") for n in range(17)], [f"i{n}" for n in range(18)])


def test_the_own_brokers_keys_sign_for_every_accepted_issuer_without_a_source() -> None:
    accepted = ("broker-a", "broker-b", "broker-c")
    assert own_issuers(accepted, []) is None  # as before: a shared key file signs for every broker
    assert own_issuers(accepted, [JwksSource("broker-b", "https://b/j")]) == {"broker-a", "broker-c"}


def test_the_gate_config_carries_sources_checked_against_its_issuers() -> None:
    base = {"audience": "fleet", "issuer": ["broker-a", "broker-b"], "broker_socket": "b", "control_socket": "c",
            "private_socket": "p", "model": "m"}
    config = GateConfig.from_dict({**base, "issuer_jwks": [["broker-b", "https://b/j"]], "jwks_ca_file": "/ca.pem"})
    assert config.issuer_jwks == (("broker-b", "https://b/j"),)
    assert GateConfig.from_document(config.to_document()) == config
    with pytest.raises(ValueError, match="only https://"):
        GateConfig.from_dict({**base, "issuer_jwks": [["broker-b", "http://b/j"]]})
    with pytest.raises(ValueError, match="accepted --issuer"):
        GateConfig.from_dict({**base, "issuer_jwks": [["broker-c", "https://c/j"]]})
    with pytest.raises(ValueError, match="positive"):
        GateConfig.from_dict({**base, "jwks_interval": 0})


def test_requests_are_conditional_once_a_validator_is_known_and_never_compressed() -> None:
    assert "If-None-Match" not in conditional_headers(None)
    headers = conditional_headers('"v1"')
    assert headers["If-None-Match"] == '"v1"' and headers["Accept-Encoding"] == "identity"


def test_the_head_decides_304_a_body_to_read_or_a_failure() -> None:
    assert check_head(304, {}, '"v1"') == NOT_MODIFIED
    assert check_head(200, JSON, None) is None
    assert check_head(200, {"content-type": "application/jwk-set+json; charset=utf-8"}, None) is None
    for status, headers, etag, words in [
        (304, {}, None, "unconditional"),
        (302, {**JSON, "location": "http://evil/"}, None, "answered 302"),
        (500, JSON, '"v1"', "answered 500"),
        (200, {"content-type": "text/html"}, None, "not JSON"),
        (200, {}, None, "not JSON"),
        (200, {**JSON, "content-encoding": "gzip"}, None, "compressed"),
        (200, {**JSON, "content-length": str(MAX_JWKS_BYTES + 1)}, None, "larger than"),
        (200, {**JSON, "content-length": "-1"}, None, "larger than"),
    ]:
        with pytest.raises(JwksError, match=words):
            check_head(status, headers, etag)


def test_every_key_is_bound_to_the_sources_issuer_with_its_algorithm_pinned() -> None:
    fresh = read_answer(_body(dict(ED.public_jwk), dict(EC.public_jwk)), {**JSON, "etag": 'W/"v2"'}, "broker-b")
    assert fresh.etag == 'W/"v2"' and fresh.skipped == ()
    assert fresh.keys.issuers == {"broker-b"}
    assert {kid: alg for kid, (alg, _) in fresh.keys.keys.items()} == {ED.kid: "EdDSA", EC.kid: "ES256"}
    assert all(candidate[2] == {"broker-b"} for (candidate,) in fresh.keys.checks.values())


def test_keys_that_cannot_verify_are_skipped_with_a_reason_that_quotes_nothing_remote() -> None:
    good = dict(ED.public_jwk)
    private = {**dict(EC.public_jwk), "kid": "p", "d": "c2VjcmV0"}
    entries = [
        "nope",
        private,
        {**good, "kid": "enc", "use": "enc"},
        {**good, "kid": "ops", "key_ops": ["sign"]},
        {"kty": "RSA", "kid": "rsa", "alg": "RS256", "n": "AQAB", "e": "AQAB"},
        {"kty": "oct", "kid": "hs", "alg": "HS256", "k": "c2VjcmV0"},
        {**good, "kid": "none", "alg": "none"},
        {**good, "kid": "noalg", "alg": None},
        {**dict(EC.public_jwk), "kid": "mix", "alg": "EdDSA"},
        {**good, "kid": ["list"]},
        {**good, "kid": "x" * 129},
        {**good, "kty": ["OKP"]},
        {**good, "kid": "short", "x": "AAAA"},
        good,
        {**dict(EC.public_jwk), "kid": ED.kid},
        {**good, "kid": "verify-ok", "key_ops": ["verify"]},
    ]
    keys, skipped = read_jwks(_body(*entries), "broker-b")
    assert sorted(keys.keys) == sorted([ED.kid, "verify-ok"])
    assert len(skipped) == len(entries) - 2
    assert skipped[1] == "key 1: it holds private key members (never load or publish those)"
    assert skipped[-1] == "key 14: its kid is used by an earlier key"
    assert not any("c2VjcmV0" in reason or "RS256" in reason or "xxxx" in reason for reason in skipped)


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"keys": {}}', b'{"keys": null}', b"[" * 100_000,
                                  b"\xff\xfe", b'{"keys": []}', b'{"keys": [{"kty": "RSA"}]}'])
def test_a_document_that_is_not_a_jwks_is_a_failed_pull(body: bytes) -> None:
    with pytest.raises(JwksError):
        read_answer(body, JSON, "broker-b")


def test_the_caps_on_size_and_key_count() -> None:
    with pytest.raises(JwksError, match="more than 32 keys"):
        read_jwks(_body(*[dict(ED.public_jwk)] * (MAX_JWKS_KEYS + 1)), "broker-b")
    with pytest.raises(JwksError, match="larger than"):
        read_answer(b" " * (MAX_JWKS_BYTES + 1), JSON, "broker-b")
    keys, _ = read_jwks(_body(*[{**dict(ED.public_jwk), "kid": f"k{n}"} for n in range(MAX_JWKS_KEYS)]), "b")
    assert len(keys.keys) == MAX_JWKS_KEYS


@pytest.mark.parametrize(("etag", "kept"), [('"abc"', True), ('W/"abc"', True), ("", False), ('"a b"', False),
                                            ("x" * 257, False), ('"é"', False)])
def test_only_a_sane_validator_is_kept(etag: str, kept: bool) -> None:
    fresh = read_answer(_body(dict(ED.public_jwk)), {**JSON, "etag": etag}, "broker-b")
    assert fresh.etag == (etag if kept else None)


@pytest.mark.parametrize(("argv", "expected"), [
    (["--issuer", "a", "--issuer", "b", "--issuer-jwks", "b=http://b.example/jwks"],
     "--issuer-jwks b: only https:// URLs (keys must not travel in clear text)"),
    (["--issuer-jwks", "b=https://b.example/jwks"], "--issuer-jwks needs --issuer"),
    (["--issuer", "a", "--issuer-jwks", "b=https://b.example/jwks"], "not one of the accepted --issuer names"),
    (["--issuer", "a", "--issuer", "b", "--issuer-jwks", "a=https://a.example/jwks"], "this broker's own issuer"),
    (["--issuer", "a", "--jwks-ca-file", "/nonexistent.pem"], "--jwks-ca-file needs --issuer-jwks"),
    (["--issuer", "a", "--issuer", "b", "--issuer-jwks", "b=https://b.example/jwks", "--jwks-ca-file", "/dev/null"],
     "--jwks-ca-file: not a readable PEM file of CA certificates"),
])
def test_serve_refuses_a_bad_source_in_one_line_before_anything_starts(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    launched: list[object] = []
    monkeypatch.setattr(cli, "_launch_spec", lambda *a: launched.append(a))
    code = cli.main(["serve", "--data-dir", str(tmp_path / "d"), "--upstream", "http://127.0.0.1:9", *argv])
    err = capsys.readouterr().err
    assert code == 2 and launched == []
    assert err.startswith("llama-direct: error: ") and expected in err and err.count("\n") == 1


def test_serve_hands_the_sources_to_the_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ca = tmp_path / "ca.pem"
    ca.write_text(CA_PEM)
    serve = ["serve", "--upstream", "http://127.0.0.1:9", "--data-dir", str(tmp_path / "d")]
    args = cli._parser().parse_args([*serve, "--issuer", "a", "--issuer", "b", "--issuer-jwks",
                                     "b=https://b.example/.well-known/jwks.json", "--jwks-ca-file", str(ca),
                                     "--jwks-interval", "45"])
    gate = cli.stack_plan(args, access_token="t" * 24).gate_settings
    assert (gate.get("issuer_jwks"), gate.get("jwks_ca_file"), gate.get("jwks_interval")) == (
        [("b", "https://b.example/.well-known/jwks.json")], str(ca.resolve()), 45.0)
    plain = cli.stack_plan(cli._parser().parse_args(serve), access_token="t" * 24).gate_settings
    assert not {"issuer_jwks", "jwks_ca_file", "jwks_interval"} & plain.keys()
