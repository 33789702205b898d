"""What the page's model picker needs of a real llama-server router (issue 29), on the real gate: the owner
unloads a model, and it is unloaded; a named user's unload and one from a foreign page are refused, and the
model stays loaded. A loaded model whose template takes tools is marked so, from its own `/props`."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import httpx
import pytest
from stack import Stack, run_stack

from llama_direct.lanes import MODEL_UNLOAD_PATH
from llama_launcher.cli import TEMPLATES

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]

PROMPT = {"messages": [{"role": "user", "content": "Hi."}], "max_tokens": 2}
TOOLS_TEMPLATE = Path(str(resources.files("llama_launcher") / "templates" / TEMPLATES["tools"]))
SETTLE_SECONDS = 60.0
"""How long a router may take to show a load or an unload it answered: generous on a loaded box."""


@pytest.fixture(scope="module")
def router(llama_server_binary: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    preset = tmp_path_factory.mktemp("preset") / "models.ini"
    preset.write_text(f"[alpha]\nmodel = {model_path}\nctx-size = 1024\nchat-template-file = {TOOLS_TEMPLATE}\n\n"
                      f"[beta]\nmodel = {model_path}\nctx-size = 1024\n")
    with run_stack("--llama-server", str(llama_server_binary), "--models-preset", str(preset),
                   "--models-max", "1") as running:
        yield running


def _owner(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.access_token}"}


def _listing(stack: Stack, headers: dict[str, str]) -> dict:
    answer = httpx.get(f"{stack.base}/v1/models", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _becomes(stack: Stack, model: str, status: str) -> None:
    deadline = time.monotonic() + SETTLE_SECONDS
    while (states := {m["id"]: m["status"] for m in _listing(stack, _owner(stack))["data"]})[model] != status:
        assert time.monotonic() < deadline, states
        time.sleep(0.2)


def _load(stack: Stack, model: str) -> None:
    grant = httpx.post(f"{stack.base}/direct-stream", headers=_owner(stack), json={"model": model}, timeout=30).json()
    answer = httpx.post(grant["url"] + "/v1/chat/completions", json=PROMPT, timeout=120,
                        headers={"Authorization": f"Bearer {grant['token']}"})
    assert answer.status_code == 200, answer.text
    _becomes(stack, model, "loaded")


def _api_key(stack: Stack, name: str) -> str:
    done = subprocess.run([sys.executable, "-m", "llama_launcher.cli", "users", "add", name, "--data-dir",
                           str(stack.data_dir)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return dict(line.split(": ", 1) for line in done.stdout.strip().splitlines())["API key"]


def test_the_owners_unload_unloads_the_model(router: Stack) -> None:
    _load(router, "alpha")
    assert _listing(router, _owner(router))["can_unload"] is True
    answer = httpx.post(router.base + MODEL_UNLOAD_PATH, json={"model": "alpha"}, headers=_owner(router), timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"model": "alpha", "status": "unloaded"}
    _becomes(router, "alpha", "unloaded")
    again = httpx.post(router.base + MODEL_UNLOAD_PATH, json={"model": "alpha"}, headers=_owner(router), timeout=60)
    assert again.status_code == 200, again.text  # nothing to unload: still unloaded, not an error


def test_a_named_users_unload_is_refused_and_the_model_stays(router: Stack) -> None:
    _load(router, "beta")
    key = {"Authorization": f"Bearer {_api_key(router, 'ann')}"}
    assert "can_unload" not in _listing(router, key)
    answer = httpx.post(router.base + MODEL_UNLOAD_PATH, json={"model": "beta"}, headers=key, timeout=60)
    assert answer.status_code == 403 and answer.json()["error"]["reason"] == "owner_only"
    assert {m["id"]: m["status"] for m in _listing(router, _owner(router))["data"]}["beta"] == "loaded"


def test_an_unload_from_another_site_is_refused_and_the_model_stays(router: Stack) -> None:
    _load(router, "beta")
    with httpx.Client(timeout=60) as browser:  # the owner's browser, logged in: its cookie goes along
        assert browser.get(router.login_url, follow_redirects=False).status_code == 303
        foreign = browser.post(router.base + MODEL_UNLOAD_PATH, json={"model": "beta"},
                               headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403 and foreign.json()["error"]["reason"] == "origin_not_allowed"
        assert {m["id"]: m["status"] for m in _listing(router, _owner(router))["data"]}["beta"] == "loaded"
        own = browser.post(router.base + MODEL_UNLOAD_PATH, json={"model": "beta"}, headers={"Origin": router.base})
        assert own.status_code == 200, own.text
    _becomes(router, "beta", "unloaded")


def test_a_loaded_models_own_template_says_whether_it_takes_tools(router: Stack) -> None:
    _load(router, "alpha")  # its preset's template takes tools
    deadline = time.monotonic() + SETTLE_SECONDS
    while (entry := _entry(router, "alpha")).get("tools") is not True:
        assert time.monotonic() < deadline, entry
        time.sleep(0.2)
    _load(router, "beta")  # alpha is evicted (--models-max 1); SmolLM2's own template takes no tools
    assert "tools" not in _entry(router, "beta")
    assert _entry(router, "alpha")["tools"] is True  # known once read, an eviction does not change a template


def _entry(stack: Stack, model: str) -> dict:
    return dict(next(m for m in _listing(stack, _owner(stack))["data"] if m["id"] == model))
