"""A spec's relative paths lie in the spec file's folder (as in compose and kustomize): a spec
folder copied elsewhere runs from any directory, and keeps its cells when it moves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import yaml
from typer.testing import CliRunner

from ckptlab.cli import app

REPO = Path(__file__).resolve().parents[1]


def make_project(folder: Path) -> Path:
    """A spec folder: a plug-in file, a text file input set, an ICL task file, a results DB,
    all named relative to the spec."""
    (folder / "data").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "residual_norm.py", folder / "residual_norm.py")
    (folder / "data" / "corpus.txt").write_text(
        (REPO / "ckptlab" / "spec.py").read_text(), encoding="utf-8"
    )
    examples = [{"input": f"word{i}", "label": "even" if i % 2 == 0 else "odd"} for i in range(40)]
    (folder / "data" / "parity.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    spec = {
        "name": "moved",
        "plugins": ["residual_norm.py"],
        "models": [{"suite": "pico", "sizes": ["xs"], "steps": [0, 64]}],
        "input_sets": [
            {"name": "mine", "file": "data/corpus.txt", "num_sequences": 4, "seq_len": 32}
        ],
        "analyses": [
            {"name": "residual_norm"},
            {
                "name": "icl",
                "params": {
                    "tasks": [{"data": {"file": "data/parity.jsonl"}}],
                    "shots": [0, 1],
                    "n_test": 4,
                },
            },
        ],
        "storage": {"db": "results.duckdb"},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cells(db: Path) -> list[tuple]:
    """(key, analysis, params as stored, metric rows) of every computed cell."""
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM failures").fetchone() == (0,)
        return con.execute(
            "SELECT c.cell_key, c.analysis, c.params_json, count(m.value) FROM cells c"
            " JOIN metrics m USING (cell_key) GROUP BY ALL ORDER BY c.cell_key"
        ).fetchall()


def test_a_spec_folder_runs_from_anywhere_and_keeps_its_cells_when_moved(
    tmp_path, pico_hub, monkeypatch
):
    make_project(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runner = CliRunner()

    assert runner.invoke(app, ["validate", "../project/spec.yaml"]).exit_code == 0
    first = runner.invoke(
        app, ["run", "../project/spec.yaml", "--executor", "inline", "--tracking-uri", uri]
    )
    assert first.exit_code == 0, first.output
    db = tmp_path / "project" / "results.duckdb"  # storage.db, next to the spec
    assert not (elsewhere / "results.duckdb").exists()
    done = cells(db)
    # 2 checkpoints x (residual_norm + icl) x 1 input set, each with its rows
    assert sorted(analysis for _, analysis, _, _ in done) == ["icl"] * 2 + ["residual_norm"] * 2
    assert all(rows > 0 for *_, rows in done)
    # The key holds the path as the spec writes it, not where this run found it.
    icl_params = [json.loads(p) for _, analysis, p, _ in done if analysis == "icl"]
    assert {p["tasks"][0]["data"]["file"] for p in icl_params} == {"data/parity.jsonl"}

    # The prompts an ICL cell scored, rebuilt from here: its task file lies next to the spec.
    icl_key = next(key for key, analysis, _, _ in done if analysis == "icl")
    prompts = ["prompts", icl_key, "--task", "parity", "--shots", "1", "--db", str(db)]
    shown = runner.invoke(app, [*prompts, "--spec", "../project/spec.yaml", "--limit", "1"])
    assert shown.exit_code == 0, shown.output
    assert "prompt 0" in shown.output and "word" in shown.output
    lost = runner.invoke(app, prompts)  # without the spec: looked for here, one line
    assert lost.exit_code == 1
    assert "task data file not found: data/parity.jsonl" in " ".join(lost.output.split())

    # The folder moves; run from yet another directory: the same cells, nothing to compute.
    moved = tmp_path / "a" / "b" / "copied"
    moved.parent.mkdir(parents=True)
    shutil.move(tmp_path / "project", moved)
    monkeypatch.chdir(tmp_path / "a")
    again = runner.invoke(
        app, ["run", "b/copied/spec.yaml", "--executor", "inline", "--tracking-uri", uri]
    )
    assert again.exit_code == 0, again.output
    assert "Nothing to compute" in again.output
    assert cells(moved / "results.duckdb") == done


def test_a_missing_relative_file_names_the_spec_folder(tmp_path, monkeypatch):
    spec = make_project(tmp_path / "project")
    (tmp_path / "project" / "data" / "parity.jsonl").unlink()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", str(spec.relative_to(tmp_path))])
    assert result.exit_code == 2
    line = " ".join(result.output.split())
    where = f"analyses[1].params.tasks[0].data.file: no such file: data/parity.jsonl in {tmp_path}"
    assert f"{where}/project" in line  # the spec's folder, where a relative file lies


def test_the_shipped_examples_validate_from_outside_the_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for example in sorted((REPO / "examples").glob("*.yaml")):
        result = CliRunner().invoke(app, ["validate", str(example)])
        assert result.exit_code == 0, (example.name, result.output)
