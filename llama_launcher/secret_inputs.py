"""Secrets a user hands the launcher: read from a file or the environment, never from argv.

Each is registered with the redaction filter the moment it is read, and every problem with one is
a `LauncherError` that names the flag or variable, never the value.
"""

from __future__ import annotations

import os
from pathlib import Path

from llama_direct.redaction import register_secret
from llama_direct.runtime import REDIS_URL_ENV, UPSTREAM_KEY_ENV
from llama_direct.shared_replay import register_url
from llama_launcher.errors import LauncherError

MIN_UPSTREAM_KEY_LENGTH = 8


def read_secret_file(path: Path, flag: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as error:
        raise LauncherError(f"{flag} {path}: cannot be read ({error.strerror})") from None
    except UnicodeDecodeError:
        raise LauncherError(f"{flag} {path}: not a text file") from None
    if not value:
        raise LauncherError(f"{flag} {path}: the file is empty")
    return value


def upstream_key(key_file: Path | None) -> str | None:
    """The attached llama-server's key from `--upstream-key-file` or the environment; None: it has none."""
    key: str | None
    if key_file is not None:
        key, source = read_secret_file(key_file, "--upstream-key-file"), "--upstream-key-file"
    else:
        key, source = os.environ.get(UPSTREAM_KEY_ENV) or None, UPSTREAM_KEY_ENV
    if key is None:
        return None
    if len(key) < MIN_UPSTREAM_KEY_LENGTH:
        raise LauncherError(f"the key from {source} is shorter than {MIN_UPSTREAM_KEY_LENGTH} characters")
    register_secret(key)
    return key


def upstream_keys(key_files: list[Path], count: int) -> list[str | None]:
    """Each of `count` upstreams' key: one `--upstream-key-file` (or the environment) for all, or one
    file per `--upstream`, paired by position."""
    if count == 0:
        return []
    if len(key_files) > 1 and len(key_files) != count:
        raise LauncherError(f"give one --upstream-key-file for all upstreams, or one per --upstream "
                            f"({count}); got {len(key_files)}")
    if len(key_files) > 1:
        return [upstream_key(path) for path in key_files]
    return [upstream_key(key_files[0] if key_files else None)] * count


REDIS_SCHEMES = ("redis", "rediss", "unix")


def redis_url(url_file: Path | None) -> str | None:
    """The shared state's URL from `--redis-url-file` or the environment; None: state stays in memory.

    It may carry a password, so it is never taken from argv. The `redis` client (the `fleet` extra)
    must be installed when one is given.
    """
    if url_file is not None:
        url, source = read_secret_file(url_file, "--redis-url-file"), "--redis-url-file"
    else:
        url, source = os.environ.get(REDIS_URL_ENV, "").strip(), REDIS_URL_ENV
    if not url:
        return None
    scheme = url.partition("://")[0].lower()
    if scheme not in REDIS_SCHEMES or "://" not in url:
        raise LauncherError(f"the URL from {source} must start with redis://, rediss:// (TLS) or unix://")
    try:
        import redis  # noqa: F401 - only to say early that the extra is missing
    except ImportError:
        raise LauncherError("a Redis URL needs the redis client: pip install 'llama-direct[fleet]'") from None
    register_url(url)
    return url
