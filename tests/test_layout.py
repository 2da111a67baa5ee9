"""The package's layering: a module imports only from its own subpackage or from a lower layer.

One place lists the layers (LAYERS); the test parses every module's imports with `ast`, so an
import hidden inside a function counts too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "experiments"
# Lowest first. A subpackage may import its own modules and those of any earlier layer.
LAYERS = (
    ("core",),
    ("data",),
    ("models",),
    ("tracking",),
    ("train", "serve"),
    ("bfcl", "bench", "agree"),
    ("report", "cluster"),
    ("pipeline", "sweep"),
)
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def unit_of(module: str) -> str:
    """experiments.train.stage -> train; experiments.pipeline -> pipeline."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every `experiments.*` import in a file, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "experiments":
            if node.module == "experiments":  # from experiments import report -> experiments.report
                found += [(node.lineno, f"experiments.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "experiments"]
    return found


def upward_imports(root: Path = PKG) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        here = unit_of(".".join(rel.parts))
        if here not in RANK:
            if here not in ("__init__", ""):
                problems.append(f"{rel}: subpackage or module `{here}` is in no layer of LAYERS")
            continue
        for line, target in imports_of(path):
            there = unit_of(target)
            if there == here:
                continue
            if there not in RANK:
                problems.append(f"{rel}.py:{line} imports {target}: `{there}` is in no layer of LAYERS")
            elif RANK[there] >= RANK[here]:
                problems.append(f"{rel}.py:{line} imports {target}: `{there}` is not below `{here}`")
    return problems


def test_every_import_runs_down_the_layers():
    assert upward_imports() == []


def test_an_upward_or_sideways_import_is_caught(tmp_path):
    pkg = tmp_path / "experiments"
    for sub, body in {"core/runs.py": "from experiments.train.stage import x\n",
                      "bench/run.py": "def f():\n    from experiments.bfcl import spec\n",
                      "report/ok.py": "from experiments.core import runs\nfrom experiments.report.common import fmt\n",
                      "newthing/mod.py": "x = 1\n"}.items():
        (pkg / sub).parent.mkdir(parents=True, exist_ok=True)
        (pkg / sub).write_text(body)
    problems = upward_imports(pkg)
    assert any(p.startswith("experiments/core/runs.py:1 imports experiments.train.stage") for p in problems)
    assert any("experiments/bench/run.py:2 imports experiments.bfcl:" in p for p in problems)
    assert any("`newthing` is in no layer" in p for p in problems)
    assert not any("report/ok" in p for p in problems)


@pytest.mark.parametrize("layer", [n for layer in LAYERS for n in layer if n != "pipeline"])
def test_each_layer_is_a_subpackage(layer):
    assert (PKG / layer / "__init__.py").is_file()
