"""A llama-server that already runs elsewhere (``--upstream``): the gate's upstream, not launched by us."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

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
