"""What one prompt may cost the REAL llama-server before it is refused for not fitting (issue 25, 1-3).

llama-server tokenizes the rendered prompt, special tokens parsed, before it checks the context:
100k `<|im_end|>` strings cost it 42 s of CPU, 30,000 one-character messages 46 s, 8 MB of text
900 MB of memory, each refused afterwards. The gate now refuses what cannot fit the slot.

llama-server runs beside the stack (its pid known, its context small so the test is quick), behind
a forwarder that records what reached it. Each shape is sent twice:
- far over the bound, as the findings sent it: refused by the gate, and nothing reaches llama-server;
- just inside every bound, as the gate forwards it: llama-server refuses it itself (it still cannot
  fit) at a cost in CPU far below what a legitimate prompt of half the context costs to answer, which
  is measured in the same test (CPU-seconds of llama-server's own process, not wall time).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from forwarder import Forwarder
from stack import Stack, run_stack

from llama_launcher.gate.prompt_size import MAX_CHARS_PER_TOKEN
from llama_launcher.paths import make_runtime_dir
from llama_launcher.server_args import ServerOptions
from llama_launcher.server_process import LlamaServer

pytestmark = [pytest.mark.real, pytest.mark.timeout(900)]

ALIAS = "smollm2-prompts"
CONTEXT = 2048
MB = 1024 * 1024
WORDS_TEXT = ("the of and to in is was that for on with as by at from they this which be are had have not one all "
         "were when there can an more their said time about would who will people into year some could them "
         "other than then now look only come over think also back after use two how work first well way even "
         "new want because any these give day most river mountain village history science between through "
         "during without before under around among city family children government")


def prose(words: int) -> str:
    rng, vocabulary = random.Random(25), WORDS_TEXT.split()
    return " ".join(rng.choice(vocabulary) for _ in range(words))


@dataclass
class Lane:
    stack: Stack
    forwarder: Forwarder
    pid: int

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM for llama-server")

    def chats_forwarded(self) -> int:
        return len(self.forwarder.requests(lambda line: b"/chat/completions" in line))

    def chat(self, messages: list[Any]) -> tuple[int, dict[str, Any], float]:
        """One chat through the lane: (status, body, llama-server CPU-seconds it cost)."""
        grant = self.stack.negotiate(max_tokens=8)
        before = self.cpu()
        response = httpx.post(f"{self.stack.base}/direct/v1/chat/completions", timeout=600,
                              headers={"Authorization": f"Bearer {grant['token']}"},
                              json={"messages": messages, "max_tokens": 8})
        return response.status_code, response.json(), self.cpu() - before


@pytest.fixture(scope="module")
def lane(llama_server_binary: Path, model_path: Path) -> Iterator[Lane]:
    options = ServerOptions(binary=llama_server_binary, model=model_path, alias=ALIAS, max_tokens=2048,
                            ctx_size=CONTEXT, parallel=1)
    server = LlamaServer(options, make_runtime_dir())
    server.start()
    try:
        server.wait_ready(timeout=120, show_progress=False)
        key = server.authorization().decode().removeprefix("Bearer ")
        assert server.pid is not None
        with Forwarder(str(server.address)) as forwarder, run_stack(
            "--upstream", f"http://127.0.0.1:{forwarder.port}", "--model-alias", ALIAS, "--max-tokens", "512",
            env={"LLAMA_DIRECT_UPSTREAM_KEY": key},
        ) as stack:
            yield Lane(stack, forwarder, server.pid)
    finally:
        server.stop()


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


OVER = {
    "special_strings_100k": [user("<|im_end|>" * 100_000)],
    "one_character_messages_30k": [user("a")] * 30_000,
    "plain_text_8mb": [user("word " * (8 * MB // 5))],
}

AT_BOUND = {
    "special_strings": [user("<|im_end|>" * CONTEXT)],
    "one_character_messages": [user("a")] * CONTEXT,
    "plain_text": [user(prose(CONTEXT * MAX_CHARS_PER_TOKEN // 6)[: CONTEXT * MAX_CHARS_PER_TOKEN - 8])],
}


@pytest.fixture(scope="module")
def half_context(lane: Lane) -> float:
    """A legitimate prompt of half the context, in prose: answered, and what it costs llama-server."""
    status, body, cost = lane.chat([user(prose(CONTEXT // 2 - 40))])
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] > CONTEXT // 3
    return cost


@pytest.mark.parametrize("name", sorted(OVER))
def test_a_prompt_far_over_the_slot_is_refused_by_the_gate_and_never_reaches_llama_server(
        lane: Lane, name: str) -> None:
    forwarded = lane.chats_forwarded()
    status, body, _ = lane.chat(OVER[name])
    assert (status, body["error"]["reason"]) == (400, "prompt_too_large"), body
    assert str(CONTEXT) in body["error"]["message"]
    assert lane.chats_forwarded() == forwarded, "the prompt reached llama-server"


@pytest.mark.parametrize("name", sorted(AT_BOUND))
def test_the_worst_prompt_inside_the_bounds_costs_a_fraction_of_an_honest_one(
        lane: Lane, half_context: float, name: str) -> None:
    forwarded, peak = lane.chats_forwarded(), lane.peak()
    status, body, cost = lane.chat(AT_BOUND[name])
    assert lane.chats_forwarded() == forwarded + 1, "the gate should have let this one through"
    assert status == 400, body  # llama-server's own refusal: it still cannot fit
    # Measured on 2 cores: 0.01-0.24 s against 7 s for the half-context prompt. Half of it leaves a
    # wide margin for a loaded machine, and stays far under the 4x of a full-context prompt promised.
    assert cost < half_context / 2, f"{name}: {cost:.2f} s of CPU against {half_context:.2f} s for half the context"
    assert lane.peak() - peak < 64 * MB
