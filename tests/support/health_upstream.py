"""An upstream as the gate's `Health` asks of it: ready, at no reachable address, with a master key a
test may swap as a respawn swaps it."""

from __future__ import annotations

from llama_launcher.master_key import MasterKey


class ReadyUpstream:
    address = "/nowhere.sock"
    ssl = None
    host_header = b"localhost"

    def __init__(self) -> None:
        self.key = MasterKey.generate()

    def authorization(self) -> bytes:
        return self.key.authorization()

    def is_ready(self) -> bool:
        return True
