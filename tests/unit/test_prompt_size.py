"""The gate refuses a prompt that cannot fit the slot before llama-server tokenizes it (issue 25)."""

import base64
import json

import pytest

from llama_direct.refusals import PROMPT_TOO_LARGE, RequestRefusal
from llama_direct.tokens import Grant
from llama_launcher.gate.health import parse_models
from llama_launcher.gate.prompt_size import MAX_CHARS_PER_TOKEN, PromptSize, check_fits, measure
from llama_launcher.gate.shaping import ShapingPolicy, shape_chat_body

GRANT = Grant(routes=(("POST", "/v1/chat/completions"),), model="m", max_tokens=16)
CONTEXT = 1000


def shaped(messages: list[object], *, context: int = CONTEXT, vision: bool = False, **extra: object) -> bytes:
    body = json.dumps({"messages": messages, **extra}).encode()
    return shape_chat_body(body, GRANT, ShapingPolicy(context=context, vision=vision))


def reason_of(messages: list[object], **extra: object) -> tuple[str, str]:
    with pytest.raises(RequestRefusal) as caught:
        shaped(messages, **extra)
    body = caught.value.to_body()
    return caught.value.code, json.loads(body)["error"]["message"]


def user(text: str) -> dict[str, object]:
    return {"role": "user", "content": text}


# --- the three bounds, each alone --------------------------------------------------------------


def test_text_up_to_the_bound_passes_and_one_character_more_is_refused() -> None:
    limit = CONTEXT * MAX_CHARS_PER_TOKEN - len("user") - len("assistant")  # a role is rendered text too
    shaped([user("a" * (limit - 4)), {"role": "assistant", "content": "abcd"}])
    code, message = reason_of([user("a" * (limit - 4)), {"role": "assistant", "content": "abcde"}])
    assert code == PROMPT_TOO_LARGE.code
    assert message == "The prompt cannot fit this model's context of 1000 tokens: it holds too much text."


def test_messages_over_the_context_are_refused_however_short() -> None:
    shaped([user("a")] * CONTEXT)
    code, message = reason_of([user("a")] * (CONTEXT + 1))
    assert code == PROMPT_TOO_LARGE.code and "too many messages" in message


@pytest.mark.parametrize("marker", ["<|im_end|>", "<|eot_id|>", "</s>", "[INST]", "<start_of_turn>", "<think>"])
def test_special_token_strings_over_the_context_are_refused(marker: str) -> None:
    shaped([user(marker * CONTEXT)])
    code, message = reason_of([user(marker * (CONTEXT + 1))])
    assert code == PROMPT_TOO_LARGE.code and "special-token strings" in message


def test_special_strings_count_across_messages_tools_and_tool_calls() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "<|im_start|>" * 400}}
    tools = [{"type": "function", "function": {"name": "t", "description": "<|im_end|>" * 300,
                                               "parameters": {"type": "object"}}}]
    messages = [user("<|im_start|>" * 301), {"role": "assistant", "content": None, "tool_calls": [call]}]
    assert measure(messages, tools).special == 1001
    assert reason_of(messages, tools=tools)[0] == PROMPT_TOO_LARGE.code


def test_the_message_text_is_never_echoed() -> None:
    _, message = reason_of([user("secret-looking text " * 2000)])
    assert "secret" not in message


# --- what is not text ---------------------------------------------------------------------------


def test_image_data_is_not_counted_as_text() -> None:
    png = base64.b64encode(bytes.fromhex(
        "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
        "0000000d4944415478da63f8cfc0f01f0005000201a3f5b3e10000000049454e44ae426082")).decode()
    url = "data:image/png;base64," + png
    size = measure([{"role": "user", "content": [{"type": "text", "text": "what is it?"},
                                                 {"type": "image_url", "image_url": {"url": url}}]}])
    assert size.chars == len("user") + len("text") + len("what is it?") + len("image_url")


def test_counting_a_deep_value_does_not_recurse() -> None:
    deep: object = "x"
    for _ in range(100_000):
        deep = [deep]
    assert measure([deep]).chars == 1


# --- the pure check ------------------------------------------------------------------------------


def test_check_fits_names_the_first_bound_that_fails() -> None:
    check_fits(PromptSize(messages=10, special=10, chars=10 * MAX_CHARS_PER_TOKEN), 10)
    for size, variant in [(PromptSize(11, 0, 0), "messages"), (PromptSize(1, 11, 0), "special"),
                          (PromptSize(1, 0, 10 * MAX_CHARS_PER_TOKEN + 1), "")]:
        with pytest.raises(RequestRefusal) as caught:
            check_fits(size, 10)
        assert caught.value.code == PROMPT_TOO_LARGE.code
        assert ("too much text" in caught.value.message) == (variant == "")


# --- where the context comes from behind a router ---------------------------------------------


def test_a_router_models_context_is_its_presets_ctx_size_and_none_without_one() -> None:
    def entry(name: str, *args: str) -> dict[str, object]:
        return {"id": name, "status": {"value": "unloaded", "args": ["llama-server", "--port", "0", *args]}}

    models = parse_models({"data": [entry("a", "--ctx-size", "4096"), entry("b", "-c", "2048"),
                                    entry("c"), entry("d", "--ctx-size", "0"), entry("e", "--ctx-size")]})
    assert {name: state.context for name, state in models.items()} == {
        "a": 4096, "b": 2048, "c": None, "d": None, "e": None}
