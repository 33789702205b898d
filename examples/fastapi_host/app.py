"""A host app with users of its own that mounts the broker: its users get lane tokens, no second login.

Its auth is a toy (HTTP Basic against `EXAMPLE_USERS`, `name:password` pairs separated by commas);
yours is whatever your app already has. All the broker needs from it is `who(request)`: a stable
user id, or None. Run it beside a gate with `python examples/fastapi_host/app.py` (docs/embedding.md).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
from pathlib import Path

from fastapi import FastAPI, Request

from broker.core import BrokerCore
from broker.mount import direct_router
from broker.settings import BrokerSettings


def users_from(spec: str) -> dict[str, str]:
    """`alice:pw1,bob:pw2` -> {"alice": "pw1", "bob": "pw2"}."""
    pairs = (item.partition(":") for item in spec.split(",") if item.strip())
    return {name.strip(): password for name, _, password in pairs}


def build(core: BrokerCore, users: dict[str, str]) -> FastAPI:
    """The host's app: a route of its own, and the broker's routes behind the host's own auth."""
    app = FastAPI()

    def who(request: Request) -> str | None:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        known = users.get(name)
        return name if known is not None and hmac.compare_digest(known, password) else None

    @app.get("/hello")
    async def hello(request: Request) -> dict[str, str | None]:
        return {"user": who(request)}

    app.include_router(direct_router(core, who=who, allowed_origins=os.environ.get("EXAMPLE_ORIGINS", "").split()))
    return app


def main() -> None:
    import uvicorn

    runtime = Path(os.environ.get("EXAMPLE_RUNTIME_DIR", ".example"))
    settings = BrokerSettings(
        data_dir=runtime / "data",
        broker_socket=runtime / "broker.sock",  # unused here: the host serves the routes itself
        control_socket=runtime / "control.sock",
        gate_socket=Path(os.environ["EXAMPLE_GATE_SOCKET"]),  # the gate's private socket, for the baselines
        model=os.environ.get("EXAMPLE_MODEL", "default"),
    )
    # The broker's own login is not mounted, so its access token is never presented: a random one.
    core = BrokerCore(settings, secrets.token_urlsafe(32))
    app = build(core, users_from(os.environ.get("EXAMPLE_USERS", "")))
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("EXAMPLE_PORT", "8000")))


if __name__ == "__main__":
    main()
