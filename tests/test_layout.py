"""The package layout: one top-level import name (``ckptlab``), and imports that only go down
the layers, so that nothing at the bottom imports the top."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import ckptlab

REPO = Path(__file__).resolve().parent.parent

# Bottom to top; a module may import its own layer and the layers below it.
LAYERS = [
    # 0: foundations, no ckptlab imports above them
    {"ckptlab", "ckptlab.home", "ckptlab.catalog", "ckptlab.rows", "ckptlab.corpora",
     "ckptlab.hub", "ckptlab.code_version"},
    # 1: the analyses and their support code
    {"ckptlab.analyses", "ckptlab.analysis"},
    # 2: what a run is made of: specs, input sets, the results DB, lineage, the pico suite,
    # the report (figures of the results), the export of lm-eval's results
    {"ckptlab.spec", "ckptlab.inputs", "ckptlab.hub_corpus", "ckptlab.results",
     "ckptlab.lineage", "ckptlab.sync", "ckptlab.pico", "ckptlab.report",
     "ckptlab.lm_eval_export"},
    # 3: planning and running
    {"ckptlab.orchestrator"},
    # 4: what people call
    {"ckptlab.cli", "ckptlab.__main__", "ckptlab.icl_replay"},
]  # fmt: skip


# The root package's public functions (``ckptlab.load_results``) import a higher layer when
# called, never at import time: ``import ckptlab`` stays light (tests/test_cli_polish.py).
FACADE = {("ckptlab", "ckptlab.results")}


def layer_of(module: str) -> int:
    best = None
    for rank, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (
                best is None or len(name) > len(best[1])
            ):
                best = (rank, name)
    assert best is not None, f"{module} is in no layer of tests/test_layout.py"
    return best[0]


def ckptlab_modules() -> dict[str, Path]:
    """Every module of the installed package. An editable install maps ckptlab.analyses and
    ckptlab.orchestrator from the repo's own folders (pyproject's package-dir), which a walk
    of ckptlab/ alone does not see."""
    found = {"ckptlab": Path(ckptlab.__file__)}
    for package in ("ckptlab", "ckptlab.analyses", "ckptlab.orchestrator"):
        module = importlib.import_module(package)
        found[package] = Path(module.__file__)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            found[info.name] = Path(importlib.util.find_spec(info.name).origin)
    return found


def imports_of(module: str, path: Path) -> set[str]:
    """Every ckptlab module this one imports, at the top or inside a function."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "ckptlab" or name.startswith("ckptlab.")}


def test_every_module_is_found_where_the_layout_says():
    modules = ckptlab_modules()
    assert Path(modules["ckptlab.analyses.anisotropy"]).parent == REPO / "analyses"
    assert Path(modules["ckptlab.orchestrator.runner"]).parent == REPO / "orchestrator"
    assert "ckptlab.analyses.icl_tasks.tasks" in modules  # ICL task code lives with analyses
    assert not any(name.startswith("ckptlab.icl.") for name in modules)


def test_imports_only_go_down_the_layers():
    modules = ckptlab_modules()
    upward = []
    for module, path in sorted(modules.items()):
        for target in sorted(imports_of(module, path)):
            # `from ckptlab.x import name` names a module or an attribute: judge the module.
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if layer_of(target) > layer_of(module) and (module, target) not in FACADE:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_generic_names_are_not_importable(tmp_path):
    """`analyses` and `orchestrator` are folders of this repo, never top-level imports."""
    for name in ("analyses", "orchestrator"):
        done = subprocess.run(
            [sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True
        )
        assert done.returncode != 0 and b"ModuleNotFoundError" in done.stderr
