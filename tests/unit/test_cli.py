"""The command line's refusals: one line that names the flag, exit code 2, no traceback, no secret."""

from __future__ import annotations

import datetime
import socket
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from llama_launcher import cli, supervisor, tls
from llama_launcher.errors import LauncherError


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as stop:  # argparse's usage errors
        code = int(stop.code or 0)
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--token-ttl", "301"], "--token-ttl: 301 is outside 1..300"),
        (["--token-ttl", "0"], "--token-ttl: 0 is outside 1..300"),
        (["--max-tokens", "-5"], "--max-tokens: -5 is outside"),
        (["--port", "70000"], "--port: 70000 is outside 0..65535"),
        (["--port", "eighty"], "--port: 'eighty' is not a whole number"),
    ],
)
def test_out_of_range_numbers_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    code, err = _run(capsys, "serve", *argv)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAMA_DIRECT_UPSTREAM_KEY", raising=False)
    monkeypatch.delenv("LLAMA_DIRECT_ACCESS_TOKEN", raising=False)
    return tmp_path


def test_a_short_upstream_key_is_one_line_that_never_shows_the_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    monkeypatch.setenv("LLAMA_DIRECT_UPSTREAM_KEY", "sekrit")
    code, err = _run(capsys, "serve", "--upstream", "http://127.0.0.1:9", "--data-dir", str(isolated / "d"))
    assert code == 2
    assert err.strip() == ("llama-direct: error: the key from LLAMA_DIRECT_UPSTREAM_KEY is shorter than "
                           "8 characters")


def test_an_unreadable_upstream_key_file_is_named_without_a_traceback(
    capsys: pytest.CaptureFixture[str], isolated: Path
) -> None:
    missing = isolated / "no-such-key"
    code, err = _run(capsys, "serve", "--upstream", "http://127.0.0.1:9", "--upstream-key-file", str(missing),
                     "--data-dir", str(isolated / "d"))
    assert code == 2
    assert err.strip() == (f"llama-direct: error: --upstream-key-file {missing}: cannot be read "
                           "(No such file or directory)")


def test_doctor_reports_a_short_upstream_key_as_a_failed_check(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    monkeypatch.setenv("LLAMA_DIRECT_UPSTREAM_KEY", "sekrit")
    assert cli.main(["doctor", "--upstream", "http://127.0.0.1:9"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  the key from LLAMA_DIRECT_UPSTREAM_KEY is shorter than 8 characters" in out
    assert "sekrit" not in out


def test_allow_origin_needs_two_port_mode(capsys: pytest.CaptureFixture[str], isolated: Path) -> None:
    code, err = _run(capsys, "serve", "--allow-origin", "https://a.example", "--upstream", "http://127.0.0.1:9",
                     "--data-dir", str(isolated / "d"))
    assert code == 2
    assert "--allow-origin needs --gate-port" in err


CLEAR_KEY_WARNING = "the upstream key crosses the network in clear text"


@pytest.mark.parametrize("upstream", ["http://192.0.2.7:8080", "http://gpu-box.example:8080"])
def test_attach_over_plain_http_to_another_machine_warns_of_the_key_in_clear(
    capsys: pytest.CaptureFixture[str], isolated: Path, upstream: str
) -> None:
    # --allow-origin without --gate-port stops serve right after the warning, before any connection.
    _, err = _run(capsys, "serve", "--upstream", upstream, "--allow-origin", "https://a.example",
                  "--data-dir", str(isolated / "d"))
    assert CLEAR_KEY_WARNING in err


@pytest.mark.parametrize(
    "upstream", ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "https://192.0.2.7:8443",
                 "unix:/run/llama.sock"]
)
def test_attach_over_loopback_tls_or_a_socket_does_not_warn(
    capsys: pytest.CaptureFixture[str], isolated: Path, upstream: str
) -> None:
    _, err = _run(capsys, "serve", "--upstream", upstream, "--allow-origin", "https://a.example",
                  "--data-dir", str(isolated / "d"))
    assert CLEAR_KEY_WARNING not in err


def test_a_busy_port_names_the_port_and_the_flag() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(LauncherError) as refused:
            supervisor.bind_public("127.0.0.1", port, "--gate-port")
    assert str(refused.value) == f"port {port} on 127.0.0.1 is already in use; choose another with --gate-port"


def test_loopback_detection_decides_the_clear_text_warning() -> None:
    assert cli._is_loopback("127.0.0.1") and cli._is_loopback("::1") and cli._is_loopback("localhost")
    assert not cli._is_loopback("0.0.0.0") and not cli._is_loopback("192.168.1.5")


def test_the_self_signed_pair_is_made_once_and_reused(tmp_path: Path) -> None:
    cert, key = tls.self_signed_pair(tmp_path / "keys", "127.0.0.1")
    first = (cert.read_bytes(), key.read_bytes())
    assert key.stat().st_mode & 0o777 == 0o600
    again = tls.self_signed_pair(tmp_path / "keys", "127.0.0.1")
    assert (again[0].read_bytes(), again[1].read_bytes()) == first


def _basic_constraints(cert: Path) -> x509.BasicConstraints:
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value


def test_the_self_signed_certificate_is_a_leaf_for_server_auth(tmp_path: Path) -> None:
    cert, _ = tls.self_signed_pair(tmp_path / "keys", "127.0.0.1")
    assert _basic_constraints(cert).ca is False
    usage = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_a_self_signed_ca_from_an_older_version_is_made_anew_as_a_leaf(tmp_path: Path) -> None:
    cert, key = tls.self_signed_pair(tmp_path / "keys", "127.0.0.1")
    private_key = serialization.load_pem_private_key(key.read_bytes(), None)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    old = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
           .public_key(private_key.public_key()).serial_number(1)  # type: ignore[union-attr,arg-type]
           .not_valid_before(datetime.datetime(2025, 1, 1)).not_valid_after(datetime.datetime(2030, 1, 1))
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(private_key, hashes.SHA256()))  # type: ignore[arg-type]
    cert.write_bytes(old.public_bytes(serialization.Encoding.PEM))
    cert, key = tls.self_signed_pair(tmp_path / "keys", "127.0.0.1")
    assert _basic_constraints(cert).ca is False


def test_a_self_signed_key_that_others_can_read_is_refused_in_one_line(tmp_path: Path) -> None:
    _, key = tls.self_signed_pair(tmp_path / "keys", "127.0.0.1")
    key.chmod(0o644)
    with pytest.raises(LauncherError) as caught:
        tls.self_signed_pair(tmp_path / "keys", "127.0.0.1")
    assert "readable by its owner only" in str(caught.value) and "\n" not in str(caught.value)
    assert key.stat().st_mode & 0o777 == 0o644, "the key was chmodded instead of refused"


def test_half_a_self_signed_pair_is_made_anew(tmp_path: Path) -> None:
    cert, key = tls.self_signed_pair(tmp_path / "keys", "127.0.0.1")
    old_key = key.read_bytes()
    cert.unlink()
    cert, key = tls.self_signed_pair(tmp_path / "keys", "127.0.0.1")
    assert cert.is_file() and key.read_bytes() != old_key


@pytest.mark.parametrize(("argv", "option"), [(["bench"], "--quick"), (["bench", "soak"], "--streams")])
def test_bench_options_reach_the_benchmark_parser(
    capsys: pytest.CaptureFixture[str], argv: list[str], option: str
) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main([*argv, "--help"])
    assert stopped.value.code == 0
    assert option in capsys.readouterr().out


def test_machine_names_are_usable_in_an_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor.socket, "gethostname", lambda: "box")
    addresses = ("192.168.1.5", "127.0.1.1", "::1", "fe80::1%eth0", "2001:db8::5")
    infos = [(0, 0, 0, "", (address, 0)) for address in addresses]
    monkeypatch.setattr(supervisor.socket, "getaddrinfo", lambda *_a, **_k: infos)
    assert supervisor.machine_names() == ["box", "192.168.1.5", "2001:db8::5"]


def test_doctor_says_what_it_found_and_fails_on_a_bad_model(
    capsys: pytest.CaptureFixture[str], isolated: Path
) -> None:
    fake = isolated / "llama-server"
    fake.write_text('#!/bin/sh\necho "version: 11434 (abc1234)"\necho "built with cc for x86_64-linux-gnu"\n')
    fake.chmod(0o755)
    not_gguf = isolated / "model.gguf"
    not_gguf.write_bytes(b"not a model")
    assert cli.main(["doctor", "--llama-server", str(fake), "--model", str(not_gguf)]) == 1
    out = capsys.readouterr().out
    assert f"ok    llama-server from --llama-server: {fake} (version 11434 (abc1234))" in out
    assert out.count("FAIL") == 1 and str(not_gguf) in out
