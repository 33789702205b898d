#!/usr/bin/env python3
"""A llama-server stand-in for the smoke run's tests: it crashes the way the AMX build does (SIGSEGV
after it listens, while "loading") unless started with --no-repack, and then answers /health and a
one-token /completion on the unix socket named by --host. Never used where a real server is needed."""

import http.server
import json
import os
import signal
import socketserver
import sys

argv = sys.argv[1:]
socket_path = argv[argv.index("--host") + 1]
print(f"main: server is listening on unix://{socket_path}", flush=True)
print("load_tensors: loading model tensors, this can take a while", flush=True)
if "--no-repack" not in argv:
    print("ggml_backend_amx_mul_mat: repacked weights", flush=True)
    os.kill(os.getpid(), signal.SIGSEGV)


class Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer({"status": "ok"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Authorization") != f"Bearer {os.environ.get('LLAMA_API_KEY')}":
            self.send_error(401)
            return
        self._answer({"content": "Hi", "tokens_predicted": 1})

    def log_message(self, *args: object) -> None:
        pass


class Server(socketserver.UnixStreamServer):
    def get_request(self):  # type: ignore[no-untyped-def]  # BaseHTTPRequestHandler wants a peer address
        request, _ = super().get_request()
        return request, ("local", 0)


with Server(socket_path, Handler) as server:
    server.serve_forever()
