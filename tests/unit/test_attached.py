"""The attached server's model name, asked once at start so grants and its chunks agree (respx for HTTP)."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from llama_direct.redaction import redact
from llama_launcher.attached import AttachedServer, attached_upstreams
from llama_launcher.errors import LauncherError

URL = "http://gpu-box:8080"


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        (["qwen3"], "qwen3"),
        (["/models/Qwen3-8B-Q4_K_M.gguf"], "qwen3-8b-q4_k_m"),
        (["Qwen3-8B.gguf"], "qwen3-8b"),
        (["a", "b"], None),
        ([], None),
    ],
)
def test_the_model_name_is_public_never_a_path(ids: list[str], expected: str | None) -> None:
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(f"{URL}/v1/models").respond(json={"object": "list", "data": [{"id": i} for i in ids]})
        assert AttachedServer(URL, "upstream-key-123").model_name() == expected
    assert route.calls.last.request.headers["Authorization"] == "Bearer upstream-key-123"


@pytest.mark.parametrize(
    "answer",
    [httpx.ConnectError("refused"), httpx.Response(401, json={"error": {"code": 401}}), httpx.Response(200, text="<")],
)
def test_no_usable_answer_means_no_name(answer: httpx.Response | Exception) -> None:
    with respx.mock() as mock:
        route = mock.get(f"{URL}/v1/models")
        if isinstance(answer, Exception):
            route.side_effect = answer
        else:
            route.return_value = answer
        assert AttachedServer(URL, None).model_name() is None


def test_each_upstream_gets_its_key_by_position_and_the_keys_are_redacted() -> None:
    keys = ["first-upstream-key-0123456789", None]
    pairs = attached_upstreams([URL, "unix:/run/llama.sock"], json.dumps(keys))
    assert [url for url, _ in pairs] == [URL, "unix:/run/llama.sock"]
    assert pairs[0][1].authorization() == b"Bearer first-upstream-key-0123456789"
    assert pairs[1][1].authorization() == b""
    assert "first-upstream-key-0123456789" not in redact("key first-upstream-key-0123456789")


@pytest.mark.parametrize(("urls", "keys_json"), [([], None), ([URL], json.dumps(["a-key-0123456789", "b"]))])
def test_attach_mode_refuses_keys_that_do_not_pair_up(urls: list[str], keys_json: str | None) -> None:
    with pytest.raises(LauncherError, match="one key entry per upstream"):
        attached_upstreams(urls, keys_json)
