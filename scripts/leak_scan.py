"""Leak scan: run `llama-direct serve`, drive real traffic (failures included), then look for the keys.

    .venv/bin/python scripts/leak_scan.py [--llama-server PATH] [--timeout SECONDS]

The secrets, learned the way any process of the same user could while the stack runs:

- every master key llama-server ran with: `LLAMA_API_KEY` in `/proc/<llama-server pid>/environ`
  (its one legitimate place), read once at start and again after a `kill -9` respawned it;
- every signing private key: `<data dir>/keys/*.pem`, the one place on disk one may sit.

Each is searched in raw form and in every encoding that could carry it: the text itself, the bytes
behind it, hex, and base64 / base64url at every byte alignment (a key inside a longer base64 blob
is encoded differently depending on where it starts), plus for a signing key its PEM, its DER and
its raw scalar (a JWK's `d`).

The places: the argv of every process on the machine (`/proc/*/cmdline`, taken several times while
the stack runs), every line `serve --verbose` wrote to stdout and stderr, every HTTP response
captured (status line, headers and body), and every file under the runtime dir (while running),
the data dir (during and after; `keys/` excluded, being where the signing key must be) and the
cache dir (`~/.cache/llama-direct`; files over 16 MiB, the llama-server binary and the model, are
skipped and listed).

Zero hits is the only pass: exit 0, 1 on any hit, 2 when the scan could not run. The report names
each secret by a label, never by its value.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llama_direct.runtime import RuntimeLine, parse_ready_line, parse_runtime_line
from llama_launcher import provision
from llama_launcher.bench.processes import descendants, kill_all, stop_process
from llama_launcher.paths import cache_dir

MAX_FILE_BYTES = 16 * 1024 * 1024
CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "stream": True, "max_tokens": 12}
LONG = {"messages": [{"role": "user", "content": "Write a long story about a lighthouse."}], "stream": True,
        "max_tokens": 1000}


class ScanError(Exception):
    """The scan could not do what a pass needs (no stack, no key learned): that is no pass."""


# -- what is searched for ------------------------------------------------------------------------


@dataclass(frozen=True)
class Needle:
    label: str
    data: bytes


def base64_forms(data: bytes) -> Iterator[tuple[str, bytes]]:
    """The part of `data`'s base64 / base64url that is the same wherever `data` starts in a blob."""
    for offset in range(3):
        stable_from = -(-offset * 8 // 6)
        stable_to = (offset + len(data)) * 8 // 6
        padded = b"\x00" * offset + data
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            yield f"{name}@{offset}", encode(padded)[stable_from:stable_to]


def needles_for(label: str, forms: Iterable[tuple[str, bytes]]) -> list[Needle]:
    """Every form, and every form's base64; forms shorter than 12 bytes would match by chance."""
    found: dict[bytes, str] = {}
    for name, data in forms:
        found.setdefault(data, f"{label} ({name})")
        found.setdefault(data.hex().encode(), f"{label} ({name}, hex)")
        for b64_name, encoded in base64_forms(data):
            found.setdefault(encoded, f"{label} ({name}, {b64_name})")
    return [Needle(text, data) for data, text in found.items() if len(data) >= 12]


def master_key_needles(index: int, key: str) -> list[Needle]:
    forms = [("text", key.encode())]
    with contextlib.suppress(ValueError):
        forms.append(("decoded bytes", base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))))
    return needles_for(f"master key #{index}", forms)


def signing_key_needles(name: str, pem: bytes) -> list[Needle]:
    key = serialization.load_pem_private_key(pem, password=None)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if isinstance(key, Ed25519PrivateKey):
        scalar = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                   serialization.NoEncryption())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
    else:
        raise ScanError("a signing key of an unknown kind")
    body = b"".join(line for line in pem.strip().splitlines() if not line.startswith(b"-----"))
    return needles_for(f"signing key {name}", [("PEM", pem.strip()), ("PEM body", body), ("DER", der),
                                                ("raw scalar", scalar)])


# -- where it is searched ------------------------------------------------------------------------


@dataclass
class Haystacks:
    """Everything captured, each piece with a label that says where it came from."""

    pieces: list[tuple[str, bytes]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, label: str, data: bytes) -> None:
        self.pieces.append((label, data))
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def argv_snapshot(self, moment: str) -> None:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    argv = Path(f"/proc/{entry}/cmdline").read_bytes()
                    self.add("argv", f"argv of pid {entry} ({moment})", argv.replace(b"\0", b" "))

    def response(self, what: str, response: httpx.Response, body: bytes) -> None:
        head = f"HTTP {response.status_code} {response.reason_phrase}\r\n".encode()
        head += b"".join(name + b": " + value + b"\r\n" for name, value in response.headers.raw)
        self.add("http", f"response to {what}", head + b"\r\n" + body)

    def files(self, kind: str, root: Path, moment: str, exclude: Path | None = None) -> None:
        if not root.exists():
            self.notes.append(f"{kind}: {root} does not exist ({moment})")
            return
        for path in sorted(root.rglob("*")):
            if exclude is not None and (path == exclude or exclude in path.parents):
                continue
            if path.is_symlink() or not path.is_file():
                continue
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                self.skipped.append(f"{path} ({size / 2**20:.0f} MiB, over {MAX_FILE_BYTES // 2**20} MiB)")
                continue
            with contextlib.suppress(OSError):
                self.add(kind, f"file {path} ({moment})", path.read_bytes())


@dataclass(frozen=True)
class Hit:
    needle: str
    place: str
    line: int


def search(needles: list[Needle], haystacks: Iterable[tuple[str, bytes]]) -> list[Hit]:
    hits = []
    for place, data in haystacks:
        for needle in needles:
            at = data.find(needle.data)
            if at >= 0:
                hits.append(Hit(needle.label, place, data.count(b"\n", 0, at) + 1))
    return hits


# -- the stack and its traffic -------------------------------------------------------------------


def llama_server_pid(serve: int) -> int | None:
    for pid in descendants(serve):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("llama-server"):
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    return pid
    return None


def environ_key(pid: int) -> str:
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"LLAMA_API_KEY="):
            return item.split(b"=", 1)[1].decode()
    raise ScanError("llama-server runs without LLAMA_API_KEY in its environment")


def wait_for(what: str, check: Callable[[], object], seconds: float) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, OSError, ValueError):
            value = check()
            if value:
                return value
        time.sleep(0.1)
    raise ScanError(f"{what}: not within {seconds:.0f} s")


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    log: Path
    data_dir: Path
    base: str = ""
    access: str = ""
    runtime: Path = Path()
    family: set[int] = field(default_factory=set)


@contextlib.contextmanager
def serve(llama_server: str, timeout: float, data_dir: Path, log: Path) -> Iterator[Run]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_launcher.cli", "serve", "--port", "0", "--verbose",
             "--data-dir", str(data_dir), "--llama-server", llama_server],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    run = Run(process, log, data_dir)
    try:
        url, where = wait_for("the ready line", lambda: _ready(run), timeout)
        parts = urllib.parse.urlsplit(url)
        run.base = f"{parts.scheme}://{parts.netloc}"
        run.access = urllib.parse.parse_qs(parts.query)["token"][0]
        run.runtime = where.path
        yield run
    finally:
        run.family |= set(descendants(process.pid))
        stop_process(process, 30, group=True)
        kill_all(run.family)


def _ready(run: Run) -> tuple[str, RuntimeLine] | None:
    if run.process.poll() is not None:
        raise ScanError(f"serve exited with code {run.process.returncode} before it was ready")
    text = run.log.read_text(errors="replace")
    url, where = parse_ready_line(text), parse_runtime_line(text)
    return (url, where) if url is not None and where is not None else None


@dataclass(frozen=True)
class Captured:
    status: int
    body: bytes

    def json(self) -> dict[str, object]:
        value = json.loads(self.body)
        return value if isinstance(value, dict) else {}


class Traffic:
    """Real requests, good and bad, each response captured whole."""

    def __init__(self, run: Run, haystacks: Haystacks) -> None:
        self.run = run
        self.haystacks = haystacks
        self.client = httpx.Client(base_url=run.base, timeout=httpx.Timeout(60, read=20))
        self.bearer = {"Authorization": f"Bearer {run.access}"}

    def request(self, what: str, method: str, url: str, **kwargs: object) -> Captured:
        with self.client.stream(method, url, **kwargs) as response:  # type: ignore[arg-type]
            body = b""
            try:
                for chunk in response.iter_raw():
                    body += chunk
            except httpx.HTTPError as error:
                self.haystacks.notes.append(f"{what}: the body ended with {type(error).__name__}")
            self.haystacks.response(what, response, body)
            return Captured(response.status_code, body)

    def grant(self, **options: object) -> dict[str, object]:
        def supported() -> dict[str, object] | None:
            answer = self.request("POST /direct-stream", "POST", "/direct-stream", headers=self.bearer,
                                  json=options or None).json()
            return answer if answer.get("supported") else None

        return wait_for("a supported negotiation", supported, 30)  # type: ignore[return-value]

    def lane(self, what: str, token: str | None, body: object = CHAT) -> Captured:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.request(what, "POST", "/direct/v1/chat/completions", json=body, headers=headers)

    def drive(self, keys: list[str]) -> None:
        run, hay = self.run, self.haystacks
        self.request("login", "GET", f"/?token={run.access}", follow_redirects=False)
        self.request("GET / with the session", "GET", "/")
        self.request("GET the JWKS", "GET", "/.well-known/jwks.json")
        self.request("login with a wrong token", "GET", "/?token=wrong-token-0123456789")
        good = self.grant()
        self.lane("a good stream", str(good["token"]))
        self.lane("the spent token again", str(good["token"]))
        hay.argv_snapshot("after the first stream")
        self.lane("no token", None)
        self.lane("a garbage token", "not.a.token")
        forged = base64.urlsafe_b64encode(json.dumps({"alg": "none"}).encode()).decode().rstrip("=")
        self.lane("an alg-none token", forged + ".e30.")
        self.lane("id_slot", str(self.grant()["token"]), {**CHAT, "id_slot": 0})
        self.lane("max_tokens over the cap", str(self.grant()["token"]), {**CHAT, "max_tokens": 10**6})
        self.request("a path traversal", "POST", "/direct/v1/chat/completions/../../slots",
                     headers={"Authorization": f"Bearer {self.grant()['token']}"}, json=CHAT)
        self.request("the lane's /props", "GET", "/direct/props",
                     headers={"Authorization": f"Bearer {self.grant()['token']}"})
        self.request("negotiation with bad JSON", "POST", "/direct-stream", headers=self.bearer, content=b"{")
        self.request("negotiation with a wrong access token", "POST", "/direct-stream",
                     headers={"Authorization": "Bearer wrong-access-token-000"})
        self.request("the baseline", "POST", "/v1/chat/completions", json=CHAT, headers=self.bearer)
        self.request("an unknown page", "GET", "/nothing-here")
        self.kill_mid_stream(keys)
        self.lane("a stream after the respawn", str(self.grant()["token"]))
        self.request("revoke", "POST", "/direct-stream/revoke", headers=self.bearer)
        self.lane("a stream after the revocation", str(self.grant()["token"]))
        transport = httpx.HTTPTransport(uds=str(run.runtime / "gate.sock"))
        with httpx.Client(transport=transport, timeout=5) as gate:
            response = gate.get("http://gate/health")
            hay.response("the gate's /health", response, response.content)
        hay.argv_snapshot("before shutdown")

    def kill_mid_stream(self, keys: list[str]) -> None:
        token = str(self.grant(max_tokens=1000)["token"])
        old = llama_server_pid(self.run.process.pid)
        if old is None:
            raise ScanError("llama-server is not running")
        received = b""
        killed = False
        with self.client.stream("POST", "/direct/v1/chat/completions", json=LONG,
                                headers={"Authorization": f"Bearer {token}"}) as response:
            try:
                for chunk in response.iter_raw():
                    received += chunk
                    if not killed and received.count(b"data: ") >= 3:
                        os.kill(old, signal.SIGKILL)
                        killed = True
                ending = "a clean end of body"
            except httpx.HTTPError as error:
                ending = type(error).__name__
            cut = "without" if b"data: [DONE]" not in received else "with"
            self.haystacks.notes.append(f"the stream cut by kill -9 ended {cut} [DONE], by {ending}")
            self.haystacks.response("a stream cut by kill -9 of llama-server", response, received)
        new = wait_for("a respawned llama-server", lambda: (p := llama_server_pid(self.run.process.pid)) != old and p,
                       30)
        self.haystacks.argv_snapshot("after the respawn")
        keys.append(environ_key(int(new)))  # type: ignore[arg-type]
        self.run.family.add(int(new))  # type: ignore[arg-type]


# -- the scan ------------------------------------------------------------------------------------


def scan(llama_server: str, timeout: float) -> tuple[list[Hit], Haystacks, list[str], int]:
    data_dir = Path(tempfile.mkdtemp(prefix="ld-leak-data-"))
    handle, name = tempfile.mkstemp(prefix="ld-leak-", suffix=".log")
    os.close(handle)
    log = Path(name)
    try:
        return _scan(llama_server, timeout, data_dir, log)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        log.unlink(missing_ok=True)


def _scan(llama_server: str, timeout: float, data_dir: Path, log: Path) -> tuple[list[Hit], Haystacks, list[str], int]:
    haystacks = Haystacks()
    keys: list[str] = []
    with serve(llama_server, timeout, data_dir, log) as run:
        first = llama_server_pid(run.process.pid)
        if first is None:
            raise ScanError("llama-server is not running")
        keys.append(environ_key(first))
        run.family |= set(descendants(run.process.pid))
        haystacks.argv_snapshot("at start")
        Traffic(run, haystacks).drive(keys)
        pems = {path.name: path.read_bytes() for path in sorted((data_dir / "keys").glob("*.pem"))}
        haystacks.files("runtime", run.runtime, "while running")
        haystacks.files("data", data_dir, "while running", exclude=data_dir / "keys")
    if run.runtime.exists():
        haystacks.files("runtime", run.runtime, "after shutdown")
    haystacks.files("data", data_dir, "after shutdown", exclude=data_dir / "keys")
    haystacks.files("cache", cache_dir(), "after shutdown")
    text = log.read_bytes()
    haystacks.add("log", "serve's stdout and stderr", text)
    if not pems:
        raise ScanError("no signing key was found in the data dir")
    needles = [n for i, key in enumerate(keys, 1) for n in master_key_needles(i, key)]
    needles += [n for name, pem in pems.items() for n in signing_key_needles(name, pem)]
    hits = search(needles, haystacks.pieces)
    secrets = [f"{len(keys)} master keys", f"{len(pems)} signing keys", f"{len(needles)} byte patterns"]
    return hits, haystacks, secrets, len(text.splitlines())


def report(hits: list[Hit], haystacks: Haystacks, secrets: list[str], log_lines: int) -> str:
    counts = haystacks.counts
    lines = [
        "leak scan: " + ", ".join(secrets),
        f"  argv: {counts.get('argv', 0)} process command lines, over several snapshots while running",
        f"  logs: serve --verbose stdout+stderr, {log_lines} lines",
        f"  http: {counts.get('http', 0)} responses (status line, headers, body)",
        f"  files: {counts.get('runtime', 0)} in the runtime dir, {counts.get('data', 0)} in the data dir "
        "(keys/ excluded: the signing key's one place on disk), "
        f"{counts.get('cache', 0)} in the cache dir",
        *(f"  skipped: {item}" for item in haystacks.skipped),
        *(f"  note: {note}" for note in haystacks.notes),
        f"hits: {len(hits)}",
        *(f"  HIT: {hit.needle} in {hit.place}, line {hit.line}" for hit in hits),
        "PASS" if not hits else "FAIL",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", help="the llama-server binary (default: found or built as serve does)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds serve may take to be ready")
    args = parser.parse_args(argv)
    if args.llama_server is None:
        args.llama_server = str(provision.ensure_llama_server(None, cache_dir()).path)
    try:
        hits, haystacks, secrets, log_lines = scan(args.llama_server, args.timeout)
    except ScanError as error:
        print(f"leak scan: could not run: {error}", flush=True)
        return 2
    except (httpx.HTTPError, OSError) as error:
        print(f"leak scan: could not run: {type(error).__name__} while driving the stack", flush=True)
        return 2
    print(report(hits, haystacks, secrets, log_lines), flush=True)
    return 1 if hits else 0


if __name__ == "__main__":
    sys.exit(main())
