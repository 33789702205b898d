"""The arrows between the packages, read from the source with `ast`, so a wrong import fails CI.

Every import counts: top level, inside functions and under `if TYPE_CHECKING:`. A cycle that exists
only for type hints still means a type sits in the wrong module.

    llama_direct       the contract; imports nothing else of the project and holds no key
    broker             signing keys, sessions, the web app; never imports llama_launcher
    llama_launcher     the parent, llama-server and its master key; never imports broker ...
    llama_launcher.gate  ... the gate imports only the contract and itself (a peer of the broker,
                         composed into its process by `llama_launcher.gate_process`), so it reaches
                         no module that touches signing keys on disk
    llama_launcher.bench the one exception: it times `broker.signing_keys` beside the lane

The gate's pure cores (`GATE_PURE_CORES`) reach no I/O module of the standard library, through any
project module they import: their cases are unit tests without a socket or a clock.

No module cycles, and no cycles between folders (a package's own modules are its folder; a
sub-package is a folder of its own), the top-level packages included.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("llama_direct", "broker", "llama_launcher")
SIGNING_KEY_MODULES = frozenset({"broker.signing_keys"})
"""Modules that read, make or write a private signing key."""

Graph = Mapping[str, frozenset[str]]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_graph(root: Path = ROOT) -> dict[str, frozenset[str]]:
    """module -> the project modules it imports (anywhere in the file)."""
    paths = {module_name(p, root): p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, frozenset[str]] = {}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, is_package, node.level, node.module)
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base)
        graph[name] = frozenset(_owner(t, paths) for t in targets if t.split(".")[0] in PACKAGES)
    return graph


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _owner(target: str, modules: Iterable[str]) -> str:
    """The longest known module that `target` names or lies in (`a.b.Name` -> `a.b`)."""
    known = set(modules)
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return target


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def reachable(graph: Graph, start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph.get(todo.pop(), frozenset()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one node, or a node importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, frozenset()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, frozenset()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def folder_graph(graph: Graph) -> dict[str, frozenset[str]]:
    """folder -> the folders its modules import. A module's folder is its package; a package (a name
    that other modules lie in, or a top-level one) is its own folder."""
    known = set(graph) | {t for targets in graph.values() for t in targets}
    packages = {name.rsplit(".", 1)[0] for name in known if "." in name}

    def folder(module: str) -> str:
        return module if module in packages or "." not in module else module.rsplit(".", 1)[0]

    folders: dict[str, set[str]] = {}
    for source, targets in graph.items():
        edges = folders.setdefault(folder(source), set())
        edges.update(folder(t) for t in targets)
        edges.discard(folder(source))
    return {k: frozenset(v) for k, v in folders.items()}


def violations(graph: Graph) -> list[str]:
    """Every broken rule, one sentence each; empty when the arrows point the right way."""
    found: list[str] = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if _in(source, "llama_direct") and not _in(target, "llama_direct"):
                found.append(f"{source} imports {target}: the contract imports nothing else of the project")
            if _in(source, "broker") and _in(target, "llama_launcher"):
                found.append(f"{source} imports {target}: the broker never imports the launcher or the gate")
            if (_in(source, "llama_launcher") and not _in(source, "llama_launcher.bench")
                    and _in(target, "broker")):
                found.append(f"{source} imports {target}: the launcher and the gate never import the broker")
            if (_in(source, "llama_launcher.gate") and _in(target, "llama_launcher")
                    and not _in(target, "llama_launcher.gate")):
                found.append(f"{source} imports {target}: the gate imports only the contract and itself")
        if _in(source, "llama_launcher.gate"):
            for target in sorted(reachable(graph, source) & SIGNING_KEY_MODULES):
                found.append(f"{source} reaches {target}: the gate never loads a module that touches signing keys")
    for component in cycles(graph):
        found.append(f"import cycle between modules: {' <-> '.join(component)}")
    for component in cycles(folder_graph(graph)):
        found.append(f"import cycle between folders: {' <-> '.join(component)}")
    return found


def test_the_project_keeps_its_arrows() -> None:
    graph = read_graph()
    assert {"llama_direct.tokens", "broker.app", "llama_launcher.gate.proxy"} <= graph.keys()
    assert violations(graph) == []


def test_imports_inside_functions_and_type_checking_blocks_are_read(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    (tmp_path / "broker" / "__init__.py").write_text("")
    (tmp_path / "broker" / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from broker.b import Thing\n"
        "def f():\n    from llama_launcher import cli\n"
    )
    (tmp_path / "broker" / "b.py").write_text("from . import a\n")
    (tmp_path / "llama_launcher").mkdir()
    (tmp_path / "llama_launcher" / "__init__.py").write_text("")
    (tmp_path / "llama_launcher" / "cli.py").write_text("")
    (tmp_path / "llama_direct").mkdir()
    graph = read_graph(tmp_path)
    assert graph["broker.a"] == {"broker.b", "llama_launcher.cli"}
    assert graph["broker.b"] == {"broker.a"}
    problems = violations(graph)
    assert any("broker never imports the launcher" in p for p in problems)
    assert "import cycle between modules: broker.a <-> broker.b" in problems


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"llama_direct.tokens": {"broker.signing_keys"}}, "the contract imports nothing else"),
        ({"broker.app": {"llama_launcher.redaction"}}, "the broker never imports the launcher"),
        ({"llama_launcher.supervisor": {"broker.ids"}}, "never import the broker"),
        ({"llama_launcher.gate.keyset": {"llama_direct.keys"}, "llama_direct.keys": {"broker.signing_keys"}},
         "the gate never loads a module that touches signing keys"),
        ({"llama_launcher.cli": {"llama_launcher.bench.cli"}, "llama_launcher.bench.cli": {"llama_launcher.cli"}},
         "import cycle between modules"),
        ({"broker.app": {"llama_direct.tokens"}, "llama_direct.tokens": {"broker.app"}},
         "import cycle between folders: broker <-> llama_direct"),
        ({"llama_launcher.gate.health": {"llama_launcher.errors"}}, "the gate imports only the contract and itself"),
        ({"llama_launcher.gate.proxy": {"llama_launcher.gate_loop"}}, "the gate imports only the contract and itself"),
        ({"llama_launcher.attached": {"llama_launcher.gate.health"},
          "llama_launcher.gate.health": {"llama_launcher.gate.upstream"},
          "llama_launcher.gate.upstream": {"llama_launcher.master_key"}},
         "import cycle between folders: llama_launcher <-> llama_launcher.gate"),
        ({"llama_launcher.cli": {"llama_launcher.bench.cli"}, "llama_launcher.bench.cli": {"llama_launcher.paths"},
          "llama_launcher.doctor": {"llama_launcher.bench.stats"}},
         "import cycle between folders: llama_launcher <-> llama_launcher.bench"),
    ],
)
def test_each_rule_fails_on_a_violation(graph: dict[str, set[str]], expected: str) -> None:
    problems = violations({k: frozenset(v) for k, v in graph.items()})
    assert any(expected in p for p in problems), problems


def test_a_clean_graph_has_no_violations() -> None:
    graph = {
        "llama_direct.tokens": frozenset({"llama_direct.refusals"}),
        "broker.app": frozenset({"llama_direct.tokens", "broker.signing_keys"}),
        "llama_launcher.gate.proxy": frozenset({"llama_direct.tokens", "llama_launcher.gate.upstream"}),
        "llama_launcher.gate_process": frozenset({"llama_launcher.gate.proxy", "llama_launcher.server_process"}),
        "llama_launcher.bench.scenarios": frozenset({"broker.signing_keys", "llama_launcher.server_process"}),
    }
    assert violations(graph) == []


def test_a_modules_folder_is_its_package_and_a_package_is_its_own() -> None:
    graph = {
        "llama_launcher.gate": frozenset(),
        "llama_launcher.gate.proxy": frozenset({"llama_launcher.gate.upstream", "llama_direct.tokens"}),
        "llama_launcher.gate_process": frozenset({"llama_launcher.gate", "llama_launcher.errors"}),
    }
    assert folder_graph(graph) == {
        "llama_launcher.gate": frozenset({"llama_direct"}),
        "llama_launcher": frozenset({"llama_launcher.gate"}),
    }


def test_every_type_ignore_names_its_code_and_says_why() -> None:
    """mypy checks the code (`ignore-without-code`); the reason after it is for the next reader."""
    pattern = re.compile(r"# type: ignore\[[\w-]+(, [\w-]+)*\]  # \S")
    bare = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "type: ignore" in line and not pattern.search(line)
    ]
    assert bare == []


GATE_PURE_CORES = ("http1", "request_reader", "connection_core", "scope", "shaping", "pinned", "images", "bounds",
                   "prompt_size", "jwks_document", "stream_ledger", "usage_tail")
"""The gate's pure cores: bytes or values in and out; their shells (`connection`, `core`, ...) do the I/O."""
IO_MODULES = frozenset({"asyncio", "socket", "ssl", "selectors", "time", "threading", "subprocess"})
"""Standard-library modules that wait, touch a socket or read the clock."""


def io_imports(graph: Graph, module: str, root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the `IO_MODULES` it imports, for `module` and every project module it reaches."""
    found: dict[str, set[str]] = {}
    for name in sorted({module} | reachable(graph, module)):
        path = root / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = root / name.replace(".", "/") / "__init__.py"
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
        if imported & IO_MODULES:
            found[name] = imported & IO_MODULES
    return found


@pytest.fixture(scope="module")
def project_graph() -> Graph:
    return read_graph()


@pytest.mark.parametrize("core", GATE_PURE_CORES)
def test_the_gates_pure_cores_reach_no_io(project_graph: Graph, core: str) -> None:
    assert io_imports(project_graph, f"llama_launcher.gate.{core}") == {}


def test_an_io_import_a_core_reaches_through_the_contract_is_found(tmp_path: Path) -> None:
    for package in ("llama_direct", "llama_launcher", "llama_launcher/gate", "broker"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "llama_launcher/gate/connection_core.py").write_text("from llama_direct import clock\n")
    (tmp_path / "llama_direct/clock.py").write_text("import os\nfrom time import monotonic\n")
    graph = read_graph(tmp_path)
    assert io_imports(graph, "llama_launcher.gate.connection_core", tmp_path) == {"llama_direct.clock": {"time"}}
