"""The browser client as the npm package `llama-direct`: `npm pack` in frontend/ builds what it packs
(its `prepack` step, from a frontend/ with no dist/), the tarball installs into a scratch project with
no network, imports under Node with no DOM globals, and an import of every name docs/api.md lists
type-checks with tsc, as an app's build would."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from public_api import VALUE_KINDS, listed

FRONTEND = Path(__file__).resolve().parents[2] / "frontend"
TSC = FRONTEND / "node_modules" / ".bin" / "tsc"
CLIENT_NAMES = listed("Client")
RUNTIME_DEPENDENCIES = {"eventsource-parser"}
"""What the client needs at run time; the page's Markdown, sanitizer, highlighter and KaTeX are not."""


def _run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """`npm pack` from a frontend/ whose dist/ is gone, so the tarball holds only what prepack built."""
    shutil.rmtree(FRONTEND / "dist", ignore_errors=True)
    out = tmp_path_factory.mktemp("pack")
    report = json.loads(_run(["npm", "pack", "--json", "--loglevel=error", "--pack-destination", str(out)], FRONTEND))
    entry: dict[str, object] = report[0]
    entry["tarball"] = out / str(entry["filename"])
    return entry


@pytest.fixture(scope="module")
def scratch(packed: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new project with the tarball installed offline. Its one dependency comes packed from
    frontend/node_modules, since npm's cache holds the tarball but not the registry's listing of it."""
    project = tmp_path_factory.mktemp("scratch")
    (project / "package.json").write_text(json.dumps({"name": "scratch", "private": True, "type": "module"}))
    local = [_run(["npm", "pack", "--ignore-scripts", "--loglevel=error", "--pack-destination", str(project),
                   str(FRONTEND / "node_modules" / name)], project).strip().splitlines()[-1]
             for name in sorted(RUNTIME_DEPENDENCIES)]
    _run(["npm", "install", "--offline", "--no-audit", "--no-fund", "--loglevel=error",
          *[f"./{name}" for name in local], str(packed["tarball"])], project)
    yield project


def test_the_tarball_holds_the_built_client_and_not_the_page(packed: dict[str, object]) -> None:
    paths = {str(file["path"]) for file in packed["files"]}  # type: ignore[attr-defined]
    assert {"package.json", "README.md", "dist/index.js", "dist/index.d.ts"} <= paths
    assert all(path in ("package.json", "README.md") or path.startswith("dist/") for path in paths), paths
    assert not any("page" in path or (path.endswith(".ts") and not path.endswith(".d.ts")) for path in paths), paths


def test_its_dependencies_are_what_the_client_needs(scratch: Path) -> None:
    manifest = json.loads((scratch / "node_modules" / "llama-direct" / "package.json").read_text())
    assert set(manifest.get("dependencies", {})) == RUNTIME_DEPENDENCIES
    assert "private" not in manifest
    assert manifest["exports"]["."] == {"types": "./dist/index.d.ts", "default": "./dist/index.js"}


def test_it_imports_under_node_without_dom_globals(scratch: Path) -> None:
    script = (
        'const names = Object.keys(await import("llama-direct"));'
        'console.log(JSON.stringify({names, window: typeof window, document: typeof document}));'
    )
    seen = json.loads(_run(["node", "--input-type=module", "-e", script], scratch))
    assert seen["window"] == seen["document"] == "undefined"
    values = {entry.name for entry in CLIENT_NAMES if entry.kind in VALUE_KINDS}
    assert values <= set(seen["names"]), f"listed in docs/api.md but not exported: {values - set(seen['names'])}"


@pytest.mark.parametrize("resolution", ["node16", "bundler"])
def test_an_import_of_every_listed_name_type_checks(scratch: Path, resolution: str) -> None:
    names = ", ".join(entry.name for entry in CLIENT_NAMES)
    (scratch / "consumer.ts").write_text(
        f'import type {{ {names} }} from "llama-direct";\n'
        'import * as client from "llama-direct";\n'
        "export const sdkFetch: typeof fetch = client.directFetch({ headTimeoutMs: 5000 });\n"
        "export async function reply(text: string): Promise<string> {\n"
        '  let out = "";\n'
        '  for await (const event of client.streamChat({ messages: [{ role: "user", content: text }] })) {\n'
        '    if (event.type === "text_delta") out += event.text;\n'
        "  }\n"
        "  return out;\n"
        "}\n"
        f"export type Listed = [{', '.join(_type_of(entry.name, entry.kind) for entry in CLIENT_NAMES)}];\n"
    )
    module = "node16" if resolution == "node16" else "esnext"
    (scratch / f"tsconfig.{resolution}.json").write_text(json.dumps({"compilerOptions": {
        "strict": True, "noEmit": True, "target": "es2022", "lib": ["es2022", "dom"], "types": [],
        "module": module, "moduleResolution": resolution, "skipLibCheck": False,
    }, "files": ["consumer.ts"]}))
    _run([str(TSC), "-p", f"tsconfig.{resolution}.json"], scratch)


def _type_of(name: str, kind: str) -> str:
    """A type that uses the name, so that tsc resolves each one (an unused `import type` is checked too,
    but this also proves a value is a value)."""
    return f"typeof {name}" if kind in VALUE_KINDS else name
