"""What both sides of the process know about a llama-server: the launcher starts or attaches to one,
the gate talks to it, and neither may import the other.

`NotListening` is raised by the launcher's upstreams (a server between two runs, one not started yet)
and caught by the gate on the request path. `public_name` is the one rule that keeps a file path out
of a model's name, applied by the gate's health and by the launcher when it asks an attached server.
"""

from __future__ import annotations

from pathlib import PurePath


class NotListening(Exception):
    """llama-server has no address or key right now (not started yet, or between two runs).

    Not a launcher error meant for a terminal: the gate meets it on the request path and answers 502,
    nobody prints it.
    """


def public_name(name: str) -> str:
    """A single llama-server's model name as clients may see it: an `--alias` as it is, a file path
    (a server started without `--alias`) reduced to its stem, since a path must never reach a browser."""
    if "/" in name or name.endswith(".gguf"):
        return PurePath(name).stem.lower()
    return name
