"""A private CA, a server certificate for loopback, and a broker's JWKS served over TLS (h11).

The server answers `GET` with the JWKS and a strong ETag, `304` to a matching `If-None-Match`, and
records each request, so tests can see the gate's conditional pulls. `body` and `status` override
the answer for the hostile cases; `stop()` closes every connection, `start()` rebinds the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

JWKS_PATH = "/.well-known/jwks.json"


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_pki(directory: Path, name: str = "test-ca") -> Pki:
    """A CA and a leaf it signs for 127.0.0.1 and localhost, as PEM files in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.pem", directory / "server-cert.pem", directory / "server-key.pem")
    pki.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    pki.key_file.chmod(0o600)
    return pki


class JwksServer:
    """A broker's `/.well-known/jwks.json` over TLS on 127.0.0.1."""

    def __init__(self, pki: Pki, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.body: bytes | None = None
        """Sent instead of the JWKS (with no ETag and no Content-Length) when set."""
        self.status = 200
        self.extra_headers: list[tuple[bytes, bytes]] = []
        self.requests: list[tuple[str, str | None, int]] = []
        """(target, If-None-Match sent, status answered)."""
        self.port = 0
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(pki.cert_file, pki.key_file)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{JWKS_PATH}"

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self._document()).hexdigest()[:16] + '"'

    def _document(self) -> bytes:
        return json.dumps(self.jwks, sort_keys=True).encode()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self._context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        connection = h11.Connection(h11.SERVER)
        try:
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    if not data:
                        return
                    connection.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    headers = dict(event.headers)
                    etag = headers.get(b"if-none-match")
                    self._answer(connection, writer, event.target.decode(), etag.decode() if etag else None)
                    await writer.drain()
                elif isinstance(event, h11.EndOfMessage):
                    if connection.our_state is h11.MUST_CLOSE:
                        return
                    connection.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (ConnectionError, ssl.SSLError, h11.ProtocolError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    def _answer(self, connection: h11.Connection, writer: asyncio.StreamWriter, target: str,
                if_none_match: str | None) -> None:
        if self.body is not None:
            status, headers, body = self.status, [(b"content-type", b"application/json")], self.body
        elif target != JWKS_PATH:
            status, headers, body = 404, [(b"content-type", b"application/json")], b"{}"
        elif self.status != 200:
            status, headers, body = self.status, [(b"content-type", b"application/json")], self._document()
        elif if_none_match == self.etag:
            status, headers, body = 304, [(b"etag", self.etag.encode())], b""
        else:
            status, body = 200, self._document()
            headers = [(b"content-type", b"application/json"), (b"etag", self.etag.encode()),
                       (b"content-length", str(len(body)).encode())]
        self.requests.append((target, if_none_match, status))
        writer.write(connection.send(h11.Response(status_code=status, headers=headers + self.extra_headers)))
        if body:
            writer.write(connection.send(h11.Data(data=body)))
        writer.write(connection.send(h11.EndOfMessage()))
