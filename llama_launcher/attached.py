"""A llama-server that already runs elsewhere (``--upstream``): the gate's upstream, not launched by us."""

from __future__ import annotations

import json
import ssl
from urllib.parse import urlsplit

import httpx

from llama_direct.llama_server import public_name
from llama_direct.redaction import register_secret
from llama_launcher.errors import LauncherError
from llama_launcher.master_key import MasterKey


class AttachedServer:
    """Satisfies the gate's ``Upstream`` protocol for ``http://``, ``https://`` or ``unix:/path.sock`` URLs."""

    def __init__(self, url: str, key: str | None) -> None:
        parts = urlsplit(url)
        self._key = MasterKey(key) if key else None
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "unix":
            if not parts.path:
                raise LauncherError("--upstream unix: needs a socket path, as in unix:/run/llama.sock")
            self.address: str | tuple[str, int] = parts.path
            self.host_header = b"llama-server"
        elif parts.scheme in ("http", "https") and parts.hostname:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            self.address = (parts.hostname, port)
            self.host_header = parts.netloc.encode("ascii")
            if parts.scheme == "https":
                self.ssl = ssl.create_default_context()
        else:
            raise LauncherError("--upstream must be an http://, https:// or unix:/path.sock URL")
        if parts.path not in ("", "/") and parts.scheme != "unix":
            raise LauncherError("--upstream must point at the server's root, without a path")

    def authorization(self) -> bytes:
        return self._key.authorization() if self._key else b""

    def is_ready(self) -> bool:
        """Readiness of a server we did not start is what its own ``/health`` says; the gate asks it."""
        return True

    def client(self, timeout: float = 5.0) -> httpx.Client:
        """A blocking client for the CLI's own checks (``doctor``, the model's name), with the key set."""
        if isinstance(self.address, str):
            transport, base = httpx.HTTPTransport(uds=self.address), "http://llama-server"
        else:
            transport = httpx.HTTPTransport(verify=self.ssl or True)
            base = f"{'https' if self.ssl else 'http'}://{self.host_header.decode()}"
        authorization = self.authorization()
        headers = {"Authorization": authorization.decode()} if authorization else {}
        return httpx.Client(transport=transport, base_url=base, headers=headers, timeout=timeout)

    def model_name(self) -> str | None:
        """The name the upstream gives its model in ``/v1/models``, as a public name: an ``--alias`` as
        it is, a file path reduced to its stem (a path must never reach a browser). None: no answer."""
        try:
            with self.client(timeout=3.0) as client:
                answer = client.get("/v1/models")
                models = answer.json().get("data", []) if answer.status_code == 200 else []
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        names = [m.get("id") for m in models if isinstance(m, dict) and isinstance(m.get("id"), str)]
        if len(names) != 1 or not names[0]:
            return None
        return public_name(names[0])


def attached_upstreams(urls: list[str], keys_json: str | None) -> list[tuple[str, AttachedServer]]:
    """Each `--upstream` with its key, paired by position as the parent handed them over (a JSON list
    in the gate's environment); each key is registered for redaction before any log line can hold it."""
    keys = json.loads(keys_json) if keys_json else [None] * len(urls)
    if not urls or len(keys) != len(urls):
        raise LauncherError("attach mode needs one key entry per upstream")
    for key in keys:
        if key:
            register_secret(key)
    return [(url, AttachedServer(url, key)) for url, key in zip(urls, keys, strict=True)]
