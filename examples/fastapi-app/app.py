"""An example host app: its own users and login, the lane started from its code, the broker mounted.

- Users come from `EXAMPLE_USERS` (`name:password` pairs, comma-separated). The page logs in with a
  form (a session cookie, HttpOnly and SameSite=Strict); the API routes, `/direct-stream` included,
  also take HTTP Basic. `who(request)` says which user asks, or None: that is all the broker needs.
- `start_lane` starts the gate and llama-server in a process of their own (the master key never
  enters this app), on a data dir of the app's (`EXAMPLE_DATA_DIR`), and `mounted_core` signs with the
  keys that lane's gate trusts.
- The page (`page/`, bundled to `static/app.js` with the browser client) streams with `streamChat`:
  direct through the lane, or through this app's baseline when `UNSLOTH_DIRECT_STREAM=0`.

`make example` builds the page and runs it; it prints `example ready: http://…` once it serves.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import html
import os
import secrets
import socket
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from broker.core import BrokerCore
from broker.mount import direct_router, mounted_core
from llama_launcher.lane import start_lane

HERE = Path(__file__).resolve().parent
COOKIE = "example_session"
MAX_FORM_BYTES = 4096


def users_from(spec: str) -> dict[str, str]:
    """`alice:pw1,bob:pw2` -> {"alice": "pw1", "bob": "pw2"}; an entry without a password is refused."""
    users = {}
    for item in spec.split(","):
        name, sep, password = item.strip().partition(":")
        if item.strip() and (not sep or not name or not password):
            raise SystemExit("EXAMPLE_USERS: each entry is name:password")
        if name:
            users[name] = password
    return users


class Users:
    """The app's own auth: a password check, sessions in memory (one worker), and HTTP Basic."""

    def __init__(self, passwords: dict[str, str]) -> None:
        self._passwords = passwords
        self._sessions: dict[str, str] = {}

    def check(self, name: str, password: str) -> str | None:
        known = self._passwords.get(name)
        ok = known is not None and hmac.compare_digest(known.encode(), password.encode())
        return name if ok else None

    def open_session(self, user: str) -> str:
        session = secrets.token_urlsafe(32)
        self._sessions[session] = user
        return session

    def close_session(self, session: str | None) -> None:
        self._sessions.pop(session or "", None)

    def who(self, request: Request) -> str | None:
        """The session cookie's user, or HTTP Basic's; None: no one the app knows."""
        user = self._sessions.get(request.cookies.get(COOKIE, ""))
        if user is not None:
            return user
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return self.check(name, password)


def login_page(message: str = "") -> str:
    return (HERE / "page" / "login.html").read_text().replace("{message}", html.escape(message))


def build(core: BrokerCore, users: Users, lane_url: str) -> FastAPI:
    """The host app: its login, its page, one API route of its own, and the broker's routes."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    lane_origin = "{0.scheme}://{0.netloc}".format(urlsplit(lane_url))
    csp = f"default-src 'self'; connect-src 'self' {lane_origin}; frame-ancestors 'none'"

    @app.get("/")
    async def index(request: Request) -> Response:
        if users.who(request) is None:
            return HTMLResponse(login_page(), headers={"Content-Security-Policy": csp})
        return FileResponse(HERE / "page" / "index.html", headers={"Content-Security-Policy": csp,
                                                                   "Cache-Control": "no-store"})

    @app.post("/login")
    async def login(request: Request) -> Response:
        body = await request.body()
        form = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace"))
        user = users.check(form.get("name", [""])[0], form.get("password", [""])[0])
        if user is None:
            return HTMLResponse(login_page("Wrong name or password."), status_code=401)
        response = RedirectResponse("./", status_code=303)
        response.set_cookie(COOKIE, users.open_session(user), httponly=True, samesite="strict")
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        user = users.who(request)
        users.close_session(request.cookies.get(COOKIE))
        if user is not None:
            await core.arevoke(user)  # the user's lane tokens stop too
        response = RedirectResponse("./", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/api/me")
    async def me(request: Request) -> Response:
        user = users.who(request)
        return JSONResponse({"user": user}, status_code=200 if user else 401)

    @app.get("/static/app.js")
    async def script() -> Response:
        return FileResponse(HERE / "static" / "app.js", media_type="text/javascript")

    app.include_router(direct_router(core, who=users.who, lane_url=lane_url))
    return app


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


async def serve(app: FastAPI, sock: socket.socket, url: str) -> None:
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.05)
        print(f"example ready: {url}", flush=True)

    task = asyncio.create_task(announce())
    try:
        await server.serve(sockets=[sock])
    finally:
        task.cancel()


def main() -> None:
    passwords = users_from(os.environ.get("EXAMPLE_USERS", ""))
    if not passwords:
        raise SystemExit("set EXAMPLE_USERS to the app's users, such as alice:wonderland,bob:builder")
    users = Users(passwords)
    sock = _listen(int(os.environ.get("EXAMPLE_PORT", "8010")))
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    options: dict[str, Any] = {}
    if os.environ.get("EXAMPLE_LLAMA_SERVER"):
        options["llama_server"] = Path(os.environ["EXAMPLE_LLAMA_SERVER"])
    if os.environ.get("EXAMPLE_MODEL"):
        options["model"] = Path(os.environ["EXAMPLE_MODEL"])
    data_dir = Path(os.environ.get("EXAMPLE_DATA_DIR", HERE / ".data"))
    origins = [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
    with start_lane(data_dir, allowed_origins=origins, **options) as lane:
        app = build(mounted_core(lane.broker_settings), users, lane.url)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(app, sock, url))


if __name__ == "__main__":
    main()
