"""The wheel and the sdist that `make dist` builds (the same hatchling command, offline, from the venv):
both carry the built page, and the wheel, installed into a new virtual environment with no source tree
on its path, runs `llama-direct serve` from another folder with a data dir of its own, serves its page
and streams a reply through the lane.

The new environment gets llama-direct only from the wheel. Its dependencies cannot come from PyPI (the
tests run offline) and no wheels of them can be counted on (pip's cache was empty on this machine), so
they come from this venv's installed copies, linked into a folder the new environment reads through a
`.pth` file, llama-direct's own editable install left out; `pip check` then proves that what the
wheel's metadata requires is there. This is `--system-site-packages` on a base that lacks llama-direct.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest
from stack import run_stack

from llama_launcher.bench.processes import descendants

ROOT = Path(__file__).resolve().parents[2]
HATCHLING = Path(sys.executable).with_name("hatchling")
PAGE = ("broker/static/index.html", "broker/static/app.js", "broker/static/llama-direct.js")


def _run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _build(source: Path, out: Path, *targets: str) -> None:
    _run([str(HATCHLING), "build", "-d", str(out), *[arg for target in targets for arg in ("-t", target)]], source)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert (ROOT / PAGE[0]).is_file(), "the page is not built: `make frontend` builds it into broker/static/"
    out = tmp_path_factory.mktemp("dist")
    _build(ROOT, out, "wheel", "sdist")
    return out


@pytest.fixture(scope="module")
def clean_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv holding the wheel; the dependencies linked from this venv, llama-direct's own left out."""
    root = tmp_path_factory.mktemp("clean")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root)
    deps = root / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not (entry.name.startswith(("llama_direct", "_llama_direct", "__editable__")) or entry.suffix == ".pth"):
            (deps / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).strip())
    (site / "linked-dependencies.pth").write_text(f"{deps}\n")
    (wheel,) = dist.glob("*.whl")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(python)]
    _run([*pip, "install", "--quiet", "--no-index", "--no-deps", str(wheel)], root)
    _run([*pip, "check"], root)
    return venv


def test_the_wheel_and_the_sdist_carry_the_page(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        assert set(PAGE) <= set(archive.namelist())
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert set(PAGE) <= names and "pyproject.toml" in names


def test_a_wheel_built_from_the_sdist_carries_the_page(dist: Path, tmp_path: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path, filter="data")
    (source,) = [path for path in tmp_path.iterdir() if path.is_dir()]
    _build(source, tmp_path / "out", "wheel")
    (wheel,) = (tmp_path / "out").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert set(PAGE) <= set(archive.namelist())


def test_the_installed_wheel_imports_from_its_venv_not_the_checkout(clean_venv: Path, tmp_path: Path) -> None:
    script = "import broker, llama_direct, llama_launcher; print(json.dumps([m.__file__ for m in " \
             "(broker, llama_direct, llama_launcher)]))"
    files = json.loads(_run([str(clean_venv / "bin" / "python"), "-c", f"import json; {script}"], tmp_path))
    assert all(Path(file).is_relative_to(clean_venv) for file in files), files
    site = Path(files[0]).parent.parent
    assert (site / PAGE[0]).is_file()


HOST_APP = """
from fastapi import FastAPI, Request

from broker.mount import direct_router, mounted_core
from llama_launcher.lane import start_lane


def who(request: Request) -> str | None:
    return request.headers.get("x-user")


def host(data_dir: str) -> FastAPI:
    lane = start_lane(data_dir, allowed_origins=["https://app.example"])
    app = FastAPI()
    app.include_router(direct_router(mounted_core(lane.broker_settings), who=who, lane_url=lane.url))
    return app
"""


def test_a_host_app_type_checks_against_the_installed_wheel(clean_venv: Path, tmp_path: Path) -> None:
    """The packages are typed (py.typed): a host's `mypy --strict` reads the API's types, not Any."""
    (tmp_path / "host.py").write_text(HOST_APP)
    _run([str(Path(sys.executable).with_name("mypy")), "--strict", "--no-incremental",
          "--python-executable", str(clean_venv / "bin" / "python"), "host.py"], tmp_path)


@pytest.mark.real
def test_the_installed_wheel_serves_its_page_and_streams(
    clean_venv: Path, llama_server_binary: Path, model_path: Path, tmp_path: Path,
) -> None:
    command = [str(clean_venv / "bin" / "llama-direct")]
    with run_stack("--llama-server", str(llama_server_binary), command=command, cwd=tmp_path) as stack:
        login = httpx.get(stack.login_url, follow_redirects=False, timeout=30)
        assert login.status_code == 303, login.text
        page = httpx.get(stack.base + "/", cookies=login.cookies, timeout=30)
        assert page.status_code == 200 and "app.js" in page.text, page.text[:500]
        script = httpx.get(stack.base + "/app.js", timeout=30)
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert _python_children(stack.process.pid) and all(
            Path(argv[0]).is_relative_to(clean_venv) for argv in _python_children(stack.process.pid))
        grant = stack.negotiate()
        assert grant["supported"], grant
        body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "stream": True}
        with httpx.stream("POST", grant["url"] + "/v1/chat/completions", json=body, timeout=120, verify=False,
                          headers={"Authorization": f"Bearer {grant['token']}"}) as reply:
            assert reply.status_code == 200, reply.read()
            lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        assert any(choice.get("delta", {}).get("content") for chunk in chunks for choice in chunk.get("choices", []))


def _python_children(pid: int) -> list[list[str]]:
    """The command lines of serve's Python children (the broker, the gate): `python -m module`."""
    lines = []
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
            if "-m" in argv:
                lines.append(argv)
    return lines
