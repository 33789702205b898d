import logging
from pathlib import Path

import pytest

from llama_direct.redaction import REDACTED, RedactingFilter, redact, register_secret
from llama_launcher.errors import ModelError
from llama_launcher.master_key import MasterKey
from llama_launcher.model import check_gguf


def test_missing_model_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=f"^model file not found: {tmp_path}/absent.gguf$"):
        check_gguf(tmp_path / "absent.gguf")


def test_non_gguf_names_the_path(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ModelError, match=r"^not a GGUF model \(.*\): .*/fake.gguf$"):
        check_gguf(fake)


def test_a_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"^model path is not a file: "):
        check_gguf(tmp_path)


def test_gguf_magic_passes(tmp_path: Path) -> None:
    good = tmp_path / "m.gguf"
    good.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert check_gguf(good) == good


def test_master_key_is_long_and_hidden() -> None:
    key = MasterKey.generate()
    value = key.authorization().removeprefix(b"Bearer ").decode()
    assert len(value) >= 43  # 32 random bytes, base64url
    assert value not in repr(key) and value not in str(key)
    assert redact(f"x {value} y") == f"x {REDACTED} y"


def test_child_environment_scrubs_inherited_llama_settings() -> None:
    key = MasterKey.generate()
    env = key.child_environment({"PATH": "/bin", "LLAMA_ARG_API_KEY": "x", "LLAMA_API_KEY": "old",
                                 "LLAMA_ARG_HOST": "0.0.0.0"})
    assert set(env) == {"PATH", "LLAMA_API_KEY"}
    assert env["LLAMA_API_KEY"].encode() == key.authorization().removeprefix(b"Bearer ")


def test_filter_scrubs_message_args_and_exception_text() -> None:
    secret = "s3cr3t-value-for-the-filter"
    register_secret(secret)
    records = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    try:
        logger.warning("message %s", secret)
        try:
            raise ValueError(f"bad header {secret}")
        except ValueError:
            logger.exception("failed with %r", {"key": secret})
    finally:
        logger.removeHandler(handler)
    assert len(records) == 2
    assert all(secret not in text for text in records)
    assert "ValueError: bad header [redacted]" in records[1]


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError):
        register_secret("short")
