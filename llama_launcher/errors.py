"""The launcher's own errors: each carries a one-line message meant for the person at the terminal."""

from __future__ import annotations


class LauncherError(Exception):
    """A problem the user can fix; ``str(error)`` is the whole explanation, on one line."""


class BinaryNotFound(LauncherError):
    pass


class BuildError(LauncherError):
    pass


class ModelError(LauncherError):
    pass


class ArgumentRefused(LauncherError):
    pass


class StartError(LauncherError):
    """llama-server did not become ready: holds its exit code and the last (redacted) lines it wrote."""

    def __init__(self, message: str, *, exit_code: int | None, last_lines: list[str]) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.last_lines = last_lines


class SmokeFailed(LauncherError):
    """A llama-server binary could not load the default model and generate one token. The message
    names the cause (the signal or exit code), llama-server's last lines and a remedy."""
