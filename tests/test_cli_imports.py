"""The commands people type answer at once (issue 23): none of them imports a heavy library
it does not need. Each command runs in a fresh interpreter, as the `ckptlab` script runs it,
and reports which of the heavy libraries are in ``sys.modules`` when it exits; a stray
top-level import anywhere on its path fails here. (Times: bench/cli_latency.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptlab.cli import app

REPO = Path(__file__).resolve().parent.parent
# Seconds each to import, and none of them needed to read a spec, plan or answer a query.
HEAVY = ("torch", "transformers", "ray", "mlflow", "sklearn", "lm_eval", "datasets", "scipy")

DRIVER = r"""
import json, sys
heavy, args = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.argv = ["ckptlab", *args]
from ckptlab.cli import script
try:
    script()
finally:  # before main's own exit handler ends the process
    loaded = sorted(m for m in heavy if m in sys.modules)
    print("LOADED " + json.dumps(loaded), file=sys.stderr, flush=True)
"""

SPEC = """name: light
models: [{suite: pico, sizes: [xs], steps: [0, 1]}]
input_sets: [{name: prose, builtin: pydoc_topics, num_sequences: 4, seq_len: 32}]
analyses: [{name: saturation}, {name: anisotropy}, {name: singular_entropy}]
"""


def loaded_by(*args: str) -> tuple[int, list[str], str]:
    """(exit code, heavy modules imported, output) of `ckptlab ARGS` in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(HEAVY), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=os.environ,
    )
    [report] = [line for line in done.stderr.splitlines() if line.startswith("LOADED ")]
    return done.returncode, json.loads(report.removeprefix("LOADED ")), done.stdout + done.stderr


@pytest.mark.parametrize(
    "args",
    [["--version"], ["--help"], ["schema"], ["suites"], ["analyses"], ["analyses", "--json"]],
)
def test_commands_without_a_spec_import_nothing_heavy(args):
    code, loaded, output = loaded_by(*args)
    assert code == 0, output
    assert loaded == [], f"ckptlab {' '.join(args)} imported {loaded}"


def test_the_scripts_quick_end_keeps_exit_codes_and_messages(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodels: []\nwhat: 1\n")
    code, loaded, output = loaded_by("validate", str(bad))
    assert code == 2 and "models: List should have at least 1 item" in output, output
    assert loaded == []
    done = subprocess.run(
        [sys.executable, "-m", "ckptlab", "query", "SELECT 1", "--db", str(tmp_path / "no.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "no results database" in done.stderr  # flushed before the process ended


def test_validate_plan_query_and_a_run_with_nothing_to_do_import_nothing_heavy(tmp_path, pico_hub):
    spec, db = tmp_path / "light.yaml", tmp_path / "r.duckdb"
    spec.write_text(SPEC)
    code, loaded, output = loaded_by("validate", str(spec))
    assert code == 0, output
    assert loaded == [], f"ckptlab validate imported {loaded}"

    # Compute it once here (this process may import anything): the checkpoints' tokenizer
    # has cut the input set's windows, which $CKPTLAB_HOME/input-sets keeps.
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = CliRunner().invoke(
        app,
        ["run", str(spec), "--db", str(db), "--tracking-uri", tracking, "--executor", "inline"],
    )
    assert done.exit_code == 0, done.output
    # Without --report, nothing ran after the last unit to draw figures into MLflow.
    import mlflow

    client = mlflow.MlflowClient(tracking)
    [experiment] = [e for e in client.search_experiments() if e.name == "light"]
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert client.list_artifacts(parent.info.run_id, "report") == []
    code, loaded, output = loaded_by("plan", str(spec), "--db", str(db))
    assert code == 0, output
    assert loaded == [], f"ckptlab plan imported {loaded}"
    code, loaded, output = loaded_by("run", str(spec), "--db", str(db), "--tracking-uri", tracking)
    assert code == 0, output
    assert "Nothing to compute: all 6 cells" in " ".join(output.split())
    assert loaded == [], f"ckptlab run with nothing to do imported {loaded}"

    code, loaded, output = loaded_by("query", "SELECT count(*) AS n FROM results", "--db", str(db))
    assert code == 0, output
    assert loaded == [], f"ckptlab query imported {loaded}"


def test_a_spec_with_lm_eval_imports_lm_eval_to_check_its_tasks_and_nothing_else():
    """lm-eval's task index is what says whether a task exists, so validating a spec that
    names lm-eval tasks needs lm-eval (and the `datasets` it imports), never torch."""
    code, loaded, output = loaded_by("validate", "specs/demo.yaml")
    assert code == 0, output
    assert set(loaded) <= {"lm_eval", "datasets"}, loaded


def test_the_lazy_stand_in_imports_on_first_use_only():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from ckptlab.lazy import torch\n"
            "before = 'torch' in sys.modules\n"
            "zeros = torch.zeros(3)\n"
            "print(before, 'torch' in sys.modules, float(zeros.sum()), repr(torch)[:30])",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.split()[:3] == ["False", "True", "0.0"], done.stdout + done.stderr


def test_inference_mode_applied_late_covers_functions_and_every_step_of_a_generator():
    import torch

    from ckptlab.lazy import inference_mode

    @inference_mode
    def plain():
        return torch.is_inference_mode_enabled(), torch.ones(2, requires_grad=True) * 2

    @inference_mode
    def steps():
        for _ in range(3):
            yield torch.is_inference_mode_enabled()

    inside, product = plain()
    assert inside and not product.requires_grad
    assert list(steps()) == [True, True, True]  # not only while the generator is created
    assert not torch.is_inference_mode_enabled()


def test_a_function_naming_the_stand_in_travels_to_a_ray_worker():
    """Ray ships functions by value (cloudpickle): one whose globals hold the stand-in arrives
    whole, and imports torch only where it runs."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, cloudpickle\n"
            "from ckptlab.lazy import torch\n"
            "payload = cloudpickle.dumps(lambda: float(torch.ones(3).sum()))\n"
            "print('torch' in sys.modules, cloudpickle.loads(payload)())",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.split() == ["False", "3.0"], done.stdout + done.stderr
