"""The contract's llama-server names: a model's public name never carries a file path."""

from __future__ import annotations

import pytest

from llama_direct.llama_server import public_name


@pytest.mark.parametrize(
    ("name", "public"),
    [
        ("qwen3-0.6b", "qwen3-0.6b"),
        ("/home/me/models/Qwen3-0.6B-Q8_0.gguf", "qwen3-0.6b-q8_0"),
        ("Qwen3-0.6B-Q8_0.gguf", "qwen3-0.6b-q8_0"),
        ("models/tiny", "tiny"),
    ],
)
def test_an_alias_stays_and_a_path_becomes_its_stem(name: str, public: str) -> None:
    assert public_name(name) == public
    assert "/" not in public_name(name)
