"""The report over suites whose steps restart in a later stage (OLMo 2's stage 2, CrystalCoder's
phases): every curve, heatmap, ICL panel and Spearman rho takes a checkpoint as its (seed,
stage, step), in training order, so stage-1 step N and stage-2 step N are two points, never
one mean. Also: two dtypes of one checkpoint are two lines, and the LM head's figures say
which heads are tied to the input embeddings. Rows are written straight into a ResultStore."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
from scipy import stats

from ckptlab.report import (
    CORRELATION_COLUMNS,
    SPEARMAN_SQL,
    TIED,
    correlation_table,
    linearity_cost,
    pick_steps,
    render_report,
    resolve_selection,
    select_rows,
)
from ckptlab.results import ResultStore
from ckptlab.rows import CellRow, CheckpointRow, MetricRow

MODEL = "org/olmo-like"
# (stage, step) in training order: stage 2 counts its steps from 0 again.
CHECKPOINTS = [("stage1", 0), ("stage1", 10), ("stage1", 20), ("stage1", 30),
               ("stage2", 0), ("stage2", 10), ("stage2", 20)]  # fmt: skip
# Per checkpoint, in that order; stage-1 step N and stage-2 step N differ everywhere.
CROSS_ENTROPY = [6.0, 5.0, 4.4, 4.0, 3.9, 3.7, 3.6]
ACCURACY = [0.30, 0.35, 0.33, 0.45, 0.50, 0.48, 0.60]  # lm_eval acc: not monotone
SINGULAR = [2.0, 1.5, 1.2, 1.0, 0.95, 0.9, 0.85]
STAGE1_TOKENS = 30_000  # stage 2 starts from the last stage-1 checkpoint's tokens
KEYS = CORRELATION_COLUMNS[:7]


def tokens_of(stage: str, step: int) -> int:
    return step * 1000 + (STAGE1_TOKENS if stage == "stage2" else 0)


def anisotropy(i: int, layer: int) -> float:
    return 0.1 * layer + 0.01 * i


def icl_accuracy(i: int, shots: int, task_seed: int) -> float:
    return 0.2 + 0.05 * i + 0.1 * shots + 0.01 * task_seed


def write_checkpoint(
    store: ResultStore,
    checkpoint: CheckpointRow,
    analyses: dict[tuple[str, str], list[MetricRow]],
) -> None:
    """One unit: a cell per (analysis, dtype), its metric rows (cell_key filled in here)."""
    cells, metrics = [], []
    for (analysis, dtype), rows in analyses.items():
        key = f"{checkpoint.commit_sha}-{analysis}-{dtype}"
        cells.append(CellRow(key, checkpoint.commit_sha, analysis, 1, "{}", "p" + analysis,
                             None, "cpu", dtype, 0.0))  # fmt: skip
        metrics += [MetricRow(key, *row) for row in rows]
    store.write_unit("r1", checkpoint, cells, metrics, [])


def stages_db(path: Path, tokens: bool, tied: bool | None = True) -> Path:
    """OLMo-2-shaped results of one model: stage 1 steps 0..30, stage 2 steps 0..20 (one seed),
    with saturation, anisotropy (3 layers), singular_entropy, lm_eval and icl rows."""
    store = ResultStore(path)
    store.ensure_schema()
    store.start_run("r1", "stages", "h", "name: stages", "code")
    for i, (stage, step) in enumerate(CHECKPOINTS):
        checkpoint = CheckpointRow(
            MODEL, f"{stage}-step{step}", step, f"sha-{stage}-{step}", None, "7b", 0,
            tokens_seen=tokens_of(stage, step) if tokens else None, stage=stage, tied_head=tied,
        )  # fmt: skip
        write_checkpoint(
            store,
            checkpoint,
            {
                ("saturation", "float32"): [(None, "cross_entropy", CROSS_ENTROPY[i])],
                ("anisotropy", "float32"): [
                    (layer, "anisotropy", anisotropy(i, layer)) for layer in range(3)
                ],
                ("singular_entropy", "float32"): [(None, "singular_entropy", SINGULAR[i])],
                ("lm_eval", "float32"): [(None, "acc", ACCURACY[i], None, "mc", 0)],
                ("icl", "float32"): [
                    (None, "accuracy", icl_accuracy(i, shots, seed), None, "cat", shots, seed)
                    for shots in (0, 1)
                    for seed in (0, 1)
                ],
            },
        )
    return path


def manifest(out: Path) -> dict:
    return {f["name"]: f for f in json.loads((out / "figures.json").read_text())["figures"]}


def checkpoints_of(line: dict) -> list[tuple[str, int]]:
    return list(zip(line["stages"], line["steps"], strict=True))


@pytest.fixture(scope="module")
def report_without_tokens(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stages")
    db = stages_db(root / "r.duckdb", tokens=False)
    out = root / "out"
    render_report(db, out, spec_name="stages")
    return db, out


def test_curves_draw_each_checkpoint_once_in_training_order(report_without_tokens):
    """Tokens unknown: x is the index in training order; the step alone would fold stage 2
    onto stage 1 (and the old grouping averaged stage-1 step 0 with stage-2 step 0)."""
    _, out = report_without_tokens
    document = json.loads((out / "figures.json").read_text())
    assert document["x"] == "checkpoint"
    figures = manifest(out)
    (line,) = figures["saturation"]["lines"]
    assert checkpoints_of(line) == CHECKPOINTS
    assert line["y"] == CROSS_ENTROPY  # the stored values, none averaged
    assert line["x"] == list(range(len(CHECKPOINTS)))
    (line,) = figures["line__anisotropy__anisotropy"]["lines"]  # at the last layer
    assert checkpoints_of(line) == CHECKPOINTS
    assert line["y"] == pytest.approx([anisotropy(i, 2) for i in range(len(CHECKPOINTS))])
    page = (out / "index.html").read_text()
    assert f"steps restart in a later stage ({MODEL})" in page
    assert "x = checkpoint" in page


def test_heatmap_columns_are_the_checkpoints_in_training_order(report_without_tokens):
    _, out = report_without_tokens
    (panel,) = manifest(out)["heatmap__anisotropy__anisotropy"]["panels"]
    assert list(zip(panel["stages"], panel["steps"], strict=True)) == CHECKPOINTS
    assert panel["layers"] == [0, 1, 2]
    for layer, row in zip(panel["layers"], panel["values"], strict=True):
        assert row == pytest.approx([anisotropy(i, layer) for i in range(len(CHECKPOINTS))])


def test_icl_panels_pick_distinct_checkpoints_in_training_order(report_without_tokens):
    _, out = report_without_tokens
    figure = manifest(out)[f"icl__{MODEL.split('/')[1]}"]
    (panel,) = figure["panels"]
    picked = pick_steps(list(range(len(CHECKPOINTS))))  # 5 of the 7, first and last kept
    assert [(line["stage"], line["step"]) for line in panel["lines"]] == [
        CHECKPOINTS[i] for i in picked
    ]
    for line, i in zip(panel["lines"], picked, strict=True):
        assert line["shots"] == [0, 1] and line["seeds"] == [2, 2]
        want = [(icl_accuracy(i, k, 0) + icl_accuracy(i, k, 1)) / 2 for k in (0, 1)]
        assert line["accuracy"] == pytest.approx(want, abs=1e-12)


def test_spearman_runs_over_every_distinct_checkpoint(report_without_tokens):
    """rho is scipy's over the seven checkpoints, not over four steps; docs/report.md's query and
    correlations.csv agree."""
    db, out = report_without_tokens
    store = ResultStore(db)
    table = correlation_table(select_rows(store, resolve_selection(store, "stages")))
    keyed = {
        tuple(r[k] for k in KEYS): (r["rho"], r["n_steps"]) for r in table.iter_rows(named=True)
    }

    icl = [sum(icl_accuracy(i, 1, s) for s in (0, 1)) / 2 for i in range(len(CHECKPOINTS))]
    cases = [
        ("saturation/cross_entropy", None, CROSS_ENTROPY, ("mc", "lm_eval/acc", 0), ACCURACY),
        ("singular_entropy/singular_entropy", None, SINGULAR, ("mc", "lm_eval/acc", 0), ACCURACY),
        ("saturation/cross_entropy", None, CROSS_ENTROPY, ("cat", "icl/accuracy", 1), icl),
    ]
    for metric, layer, x, (task, capability, shots), y in cases:
        rho, n = keyed[(MODEL, metric, layer, None, task, capability, shots)]
        assert n == len(CHECKPOINTS)
        assert rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    mean = [sum(anisotropy(i, k) for k in range(3)) / 3 for i in range(len(CHECKPOINTS))]
    rho, n = keyed[(MODEL, "anisotropy/anisotropy", "mean", None, "mc", "lm_eval/acc", 0)]
    assert n == len(CHECKPOINTS)
    assert rho == pytest.approx(stats.spearmanr(mean, ACCURACY).statistic, abs=1e-12)

    by_sql = store.user_query(SPEARMAN_SQL)
    assert {tuple(r[k] for k in KEYS) for r in by_sql.iter_rows(named=True)} == set(keyed)
    for r in by_sql.iter_rows(named=True):
        rho, n = keyed[tuple(r[k] for k in KEYS)]
        assert r["rho"] == pytest.approx(rho, abs=1e-9) and r["n_steps"] == n
    csv = pl.read_csv(out / "correlations.csv", schema_overrides={"layer": pl.String})
    assert csv.select(KEYS).rows() == table.select(KEYS).rows()
    assert set(csv["n_steps"]) == {len(CHECKPOINTS)}


def test_known_tokens_are_the_axis_where_steps_restart(tmp_path):
    """Stage 2 starts at the last stage-1 checkpoint's tokens: two checkpoints at one x, both
    drawn, in training order."""
    db = stages_db(tmp_path / "r.duckdb", tokens=True)
    out = tmp_path / "out"
    render_report(db, out, spec_name="stages")  # x = step asked for: not an axis here
    assert json.loads((out / "figures.json").read_text())["x"] == "tokens"
    (line,) = manifest(out)["saturation"]["lines"]
    assert checkpoints_of(line) == CHECKPOINTS and line["y"] == CROSS_ENTROPY
    assert line["x"] == [tokens_of(stage, step) for stage, step in CHECKPOINTS]
    assert "x = tokens seen" in (out / "index.html").read_text()


def test_stage2_ingredients_are_lines_of_their_own(tmp_path):
    """OLMo 2's stage-2 ingredients are seeds of one model: one line each, their checkpoints
    never merged with one another's, and all of them in the model's Spearman rho."""
    store = ResultStore(tmp_path / "r.duckdb")
    store.ensure_schema()
    store.start_run("r1", "stages", "h", "name: stages", "code")
    runs = [(0, "stage1", [0, 10, 20]), (1, "stage2", [0, 10]), (2, "stage2", [0, 10])]
    values, accuracy = {}, {}
    for seed, stage, steps in runs:
        for step in steps:
            i = len(values)
            values[(seed, stage, step)], accuracy[(seed, stage, step)] = 5.0 - i, (i * 7) % 5
            write_checkpoint(
                store,
                CheckpointRow(
                    MODEL,
                    f"{stage}-ingredient{seed}-step{step}",
                    step,
                    f"sha{seed}-{stage}-{step}",
                    None,
                    "7b",
                    seed,
                    stage=stage,
                ),
                {
                    ("saturation", "float32"): [(None, "cross_entropy", 5.0 - i)],
                    ("lm_eval", "float32"): [(None, "acc", (i * 7) % 5, None, "mc", 0)],
                },
            )
    out = tmp_path / "out"
    render_report(store.path, out, spec_name="stages")
    lines = manifest(out)["saturation"]["lines"]
    assert [line["seed"] for line in lines] == [0, 1, 2]
    assert [line["label"] for line in lines] == [f"olmo-like seed {s}" for s in (0, 1, 2)]
    for line, (seed, stage, steps) in zip(lines, runs, strict=True):
        assert line["steps"] == steps and set(line["stages"]) == {stage}
        assert line["y"] == [values[(seed, stage, step)] for step in steps]
    assert lines[0]["x"] == [0, 1, 2] and lines[1]["x"] == lines[2]["x"] == [3, 4]
    (entry,) = correlation_table(select_rows(store, resolve_selection(store, "stages"))).rows(
        named=True
    )
    keys = list(values)
    assert entry["n_steps"] == len(keys) == 7
    want = stats.spearmanr([values[k] for k in keys], [accuracy[k] for k in keys]).statistic
    assert entry["rho"] == pytest.approx(want, abs=1e-12)
    (by_sql,) = store.user_query(SPEARMAN_SQL).rows(named=True)
    assert by_sql["rho"] == pytest.approx(want, abs=1e-9) and by_sql["n_steps"] == 7


def test_two_dtypes_are_two_lines_and_two_series(tmp_path):
    """A float32 and a bfloat16 cell of one checkpoint are two measurements: never one line,
    never one mean. An analysis in one dtype only keeps its plain name."""
    store = ResultStore(tmp_path / "r.duckdb")
    store.ensure_schema()
    store.start_run("r1", "dtypes", "h", "name: dtypes", "code")
    steps = [0, 10, 100, 1000]
    wide = [4.0, 3.0, 2.5, 2.0]
    narrow = [4.1, 3.2, 2.4, 2.6]  # bfloat16: another order at the end
    accuracy = [0.1, 0.3, 0.2, 0.4]
    for i, step in enumerate(steps):
        write_checkpoint(
            store,
            CheckpointRow("org/m", f"step{step}", step, f"c{step}", None, None, None),
            {
                ("saturation", "float32"): [(None, "cross_entropy", wide[i])],
                ("saturation", "bfloat16"): [(None, "cross_entropy", narrow[i])],
                ("lm_eval", "float32"): [(None, "acc", accuracy[i], None, "mc", 0)],
            },
        )
    out = tmp_path / "out"
    render_report(store.path, out, spec_name="dtypes")
    lines = {line["variant"]: line for line in manifest(out)["saturation"]["lines"]}
    assert set(lines) == {"float32", "bfloat16"}
    assert lines["float32"]["y"] == wide and lines["bfloat16"]["y"] == narrow
    assert lines["float32"]["steps"] == lines["bfloat16"]["steps"] == steps
    assert lines["bfloat16"]["label"] == "m [bfloat16]"

    table = correlation_table(select_rows(store, resolve_selection(store, "dtypes")))
    got = {r["metric"]: r["rho"] for r in table.iter_rows(named=True)}
    assert set(table["capability_metric"]) == {"lm_eval/acc"}  # one dtype: no tag
    assert got == pytest.approx(
        {
            "saturation/cross_entropy [float32]": stats.spearmanr(wide, accuracy).statistic,
            "saturation/cross_entropy [bfloat16]": stats.spearmanr(narrow, accuracy).statistic,
        },
        abs=1e-12,
    )
    by_sql = {r["metric"]: r["rho"] for r in store.user_query(SPEARMAN_SQL).iter_rows(named=True)}
    assert by_sql == pytest.approx(got, abs=1e-9)


def test_lm_head_figures_say_when_the_head_is_tied(tmp_path):
    """singular_entropy measures the LM head: where the head is the input embedding matrix,
    the legend says so; other figures, and untied or unknown heads, say nothing."""
    store = ResultStore(tmp_path / "r.duckdb")
    store.ensure_schema()
    store.start_run("r1", "tied", "h", "name: tied", "code")
    for model, tied in (("org/tied", True), ("org/untied", False), ("org/unknown", None)):
        for step in (0, 10, 100):
            write_checkpoint(
                store,
                CheckpointRow(
                    model, f"step{step}", step, f"{model}{step}", None, None, None, tied_head=tied
                ),
                {
                    ("singular_entropy", "float32"): [
                        (None, "singular_entropy", 1.0 / (step + 1)),
                        (None, "effective_rank", 10.0 + step),
                    ],
                    ("saturation", "float32"): [(None, "cross_entropy", 5.0 - step / 100)],
                },
            )
    out = tmp_path / "out"
    render_report(store.path, out, spec_name="tied")
    figures = manifest(out)
    for name in ("lm_head_singular_entropy", "line__singular_entropy__effective_rank"):
        labels = {line["model"]: line["label"] for line in figures[name]["lines"]}
        want = {"org/tied": "tied" + TIED, "org/untied": "untied", "org/unknown": "unknown"}
        assert labels == want and TIED == " (tied to the input embeddings)"
    assert not any(TIED in line["label"] for line in figures["saturation"]["lines"])


def test_linearity_cost_keeps_stages_apart():
    """block k's linearity next to its removal cost, joined per (seed, stage, step)."""
    rows = []
    for i, (stage, step) in enumerate(CHECKPOINTS):
        base = {"model": MODEL, "seed": 0, "stage": stage, "step": step, "item": None,
                "task": None, "input_set": "p", "dtype": "float32"}  # fmt: skip
        for analysis, metric, layer, value in (
            ("linearity", "linearity", 0, 0.9 - i / 100),
            ("block_ablation", "cross_entropy", None, 3.0),
            ("block_ablation", "cross_entropy_skip", 1, 3.0 + i),
            ("block_ablation", "cross_entropy_linear", 1, 3.0 + i / 10),
        ):
            rows.append(
                {**base, "analysis": analysis, "metric": metric, "layer": layer, "value": value}
            )
    frame = linearity_cost(pl.DataFrame(rows))
    assert frame.select("stage", "step").rows() == CHECKPOINTS
    assert frame["linearity"].to_list() == pytest.approx([0.9 - i / 100 for i in range(7)])
    assert frame["removal_cost"].to_list() == pytest.approx([float(i) for i in range(7)])


def test_the_docs_quote_the_query():
    page = (Path(__file__).parents[1] / "docs" / "report.md").read_text()
    quoted = re.search(r"cat <<'SQL'\n(.*?)\nSQL\n", page, re.S).group(1)
    assert quoted.strip() == SPEARMAN_SQL.strip()
