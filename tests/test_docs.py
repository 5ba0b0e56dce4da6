"""The docs name only files that exist: every repository path in README.md and docs/*.md (a module, a test, a doc,
a folder) is checked against the tree, and every `path.py` function a doc cites by name is defined there."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TOP = ("inference", "weights", "zootools", "blending", "bench", "packager", "tests", "docs", ".ci")
# a module, test or doc under one of the project's folders (`*` globs allowed), or a file at the top (kernel.py,
# Makefile, requirements*.txt); other files under those names (a user's weights/ensemble.json) are examples
TOP_FILES = r"kernel\.py|Makefile|requirements[\w-]*\.txt|pyproject\.toml"
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./*-]*\.(?:py|md)|%s)" % ("|".join(map(re.escape, TOP)), TOP_FILES))
# a table row owning names: "| `inference/tracks.py` | linking detections (`link_tracks`, `Track`) |"
OWNER_ROW = re.compile(r"^\| `([\w/]+\.py)` \|(.*)\|\s*$", re.MULTILINE)
NAME = re.compile(r"`(\w+)(?:\(\))?`")


def mentioned_paths(text: str) -> set[str]:
    return {match.rstrip("/.") for match in PATH.findall(text)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_path_a_doc_names_exists(doc):
    text = doc.read_text()
    missing = sorted(path for path in mentioned_paths(text) if not any(REPO.glob(path)))
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_name_a_doc_table_gives_a_module_is_defined_there(doc):
    wrong = []
    for module, owns in OWNER_ROW.findall(doc.read_text()):
        source = (REPO / module).read_text() if (REPO / module).is_file() else ""
        wrong += [f"{module} `{name}`" for name in NAME.findall(owns)
                  if not re.search(rf"^\s*(def|class) {name}\b|^{name}\b.*=", source, re.MULTILINE)]
    assert not wrong, f"{doc.name} says these modules own names they do not define: {wrong}"


def test_the_path_pattern_finds_what_docs_write():
    text = ("see `inference/crops.py` and docs/manifest.md, tests/test_crops.py, kernel.py; zootools/convert_*.py; "
            "not /mnt/dfdc/weights/ensemble.json nor a/bench/x.py")
    assert mentioned_paths(text) == {"inference/crops.py", "docs/manifest.md", "tests/test_crops.py", "kernel.py",
                                     "zootools/convert_*.py"}


def test_every_module_the_makefile_runs_exists():
    """`make demo` and `make test` run `python -m MODULE ...`: each such module must be runnable."""
    modules = set(re.findall(r"-m ([\w.]+)", (REPO / "Makefile").read_text() + (REPO / ".ci" / "run").read_text()))
    project = {module for module in modules if module.split(".")[0] in TOP}
    assert {"zootools", "bench.samples"} <= project
    missing = [module for module in project if not (REPO / module.replace(".", "/") / "__main__.py").is_file()
               and not (REPO / (module.replace(".", "/") + ".py")).is_file()]
    assert not missing, f"the Makefile runs modules that do not exist: {missing}"
