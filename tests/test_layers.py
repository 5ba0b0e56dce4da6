"""The layers run one way: tooling -> runtime -> model zoo, the registry at the bottom, and no import cycle.

Read from the source (every import statement of every project file), so an import inside a function counts too.
Which files are tooling is the packager's one list (`packager.trace.TOOLING`).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from packager.trace import is_tooling

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("inference", "weights", "zootools", "blending", "bench", "packager", "tests")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict[str, Path]:
    files = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    files["kernel"] = REPO / "kernel.py"
    return files


def imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports (`from package import module` counts as the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in (*PACKAGES, "kernel") and name in modules)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = project_files()
    return {name: imports(path, set(files)) for name, path in files.items()}


def relative(name: str) -> str:
    path = project_files()[name]
    return path.relative_to(REPO).as_posix()


def layer(name: str) -> str:
    if is_tooling(relative(name)):
        return "tooling"
    if name == "weights.registry":
        return "registry"
    return {"kernel": "runtime", "inference": "runtime", "blending": "rules", "weights": "zoo"}[name.split(".")[0]]


# What each layer may import: each only from the layers below it (and itself).
ALLOWED = {
    "registry": set(),
    "zoo": {"zoo", "registry"},
    "rules": {"rules"},
    "runtime": {"runtime", "rules", "zoo", "registry"},
    "tooling": {"tooling", "runtime", "rules", "zoo", "registry"},
}


def test_every_import_goes_down_the_layers(graph):
    wrong = [f"{relative(a)} ({layer(a)}) imports {b} ({layer(b)})" for a, targets in graph.items() for b in targets
             if layer(b) not in ALLOWED[layer(a)] and not b.startswith("tests")]
    assert not wrong, "\n".join(wrong)


def test_nothing_but_tests_imports_tests(graph):
    assert not [a for a, targets in graph.items() for b in targets if b.startswith("tests") and
                not a.startswith("tests")]


def test_the_layers_hold_what_they_should(graph):
    assert layer("zootools.build") == layer("bench.local_lb") == layer("packager.build") == "tooling"
    assert layer("zootools.__main__") == layer("zootools.importing.reading") == "tooling"
    assert layer("weights.manifest") == "zoo"
    assert not [path for path in (REPO / "weights").rglob("*.py") if is_tooling(path.relative_to(REPO).as_posix())]
    assert layer("inference.pipeline") == layer("kernel") == "runtime"
    assert {"inference.pipeline", "weights"} <= graph["inference.cli"] | graph["inference.pipeline"]


def test_no_import_cycle_between_files(graph):
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [name, target]))
            if target not in state:
                visit(target, path + [name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
