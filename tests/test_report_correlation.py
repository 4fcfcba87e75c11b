"""What predicts what: the report's Spearman correlations across checkpoints are scipy's on the
stored rows, and the DuckDB query of docs/report.md gives the same numbers; a block's linearity
against its removal cost is the join of the stored rows; the report writes the table, the CSV
and the figures."""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import defaultdict
from statistics import mean

import numpy as np
import polars as pl
import pytest
from scipy import stats
from test_plugins import run_inline
from typer.testing import CliRunner

from ckptlab import report
from ckptlab.cli import app
from ckptlab.report import (
    CORRELATION_COLUMNS,
    SPEARMAN_SQL,
    correlation_table,
    linearity_cost,
    resolve_selection,
    select_rows,
    spearman,
)
from ckptlab.results import ResultStore
from ckptlab.rows import CellRow, CheckpointRow, MetricRow

STEPS = [0, 2, 4, 16, 64, 100]
MODEL = "pico/pico-xs"
SPEC = {
    "name": "corr",
    "models": [{"suite": "pico", "sizes": ["xs"], "steps": STEPS}],
    "input_sets": [{"name": "prose", "builtin": "pydoc_topics", "num_sequences": 4, "seq_len": 32}],
    "analyses": [
        {"name": "saturation"},
        {"name": "anisotropy"},
        {"name": "linearity"},
        {"name": "block_ablation"},
        {
            "name": "icl",
            "params": {
                "shots": [0, 4],
                "n_test": 16,
                "seeds": [0, 1],
                "tasks": [{"data": "category"}],
            },
        },
    ],
    "resources": {"batch_size": 4},
}
NAN = math.nan
# lm_eval-shaped rows (analysis lm_eval, task, shots = num_fewshot, no layer, no item), one value
# per step of STEPS (None: not stored): ties, a NaN, a constant series, one with two steps.
LM_EVAL = {
    ("pico_python_mc", 0, "acc"): [0.25, 0.25, 0.5, 0.5, 0.5, 0.75],
    ("pico_python_mc", 0, "acc_norm"): [0.2, 0.3, 0.3, 0.6, 0.55, 0.7],
    ("pico_python_mc", 5, "acc"): [0.1, NAN, 0.3, 0.2, 0.5, 0.6],
    ("pico_python_mc", 0, "acc_stderr"): [0.01, 0.02, 0.03, 0.01, 0.02, 0.05],
    ("pico_python_mc", 0, "perplexity"): [90.0, 80.0, 40.0, 30.0, 20.0, 15.0],
    ("flat_task", 0, "acc"): [0.5] * 6,
    ("short_task", 0, "acc"): [0.3, None, None, None, None, 0.6],
}
KEYS = CORRELATION_COLUMNS[:7]  # model, metric, layer, input_set, task, capability_metric, shots
DTYPE = "float32"  # the run's cells' (resources.dtype's default)


@pytest.fixture(scope="module")
def db(tmp_path_factory, pico_hub):
    """A real run (representation metrics, ICL), plus lm_eval rows stored as that analysis
    stores them: one cell per checkpoint, per-document rows (item, doc_ metrics) included."""
    root = tmp_path_factory.mktemp("correlation")
    _, summary, store = run_inline(SPEC, root, pico_hub)
    assert summary.cells_failed == 0
    store.start_run("lmeval-rows", "corr", "h", "name: corr", "code")
    checkpoints = store.query("SELECT * FROM checkpoints ORDER BY step").to_dicts()
    assert [c["step"] for c in checkpoints] == STEPS
    for i, c in enumerate(checkpoints):
        key = f"lm_eval-{c['step']}"
        metrics = [
            MetricRow(key, None, metric, values[i], task=task, shots=shots)
            for (task, shots, metric), values in LM_EVAL.items()
            if values[i] is not None
        ]
        metrics += [  # per-document rows: never a series of their own
            MetricRow(
                key, None, name, float((doc + i) % 2), item=doc, task="pico_python_mc", shots=0
            )
            for doc in range(3)
            for name in ("doc_acc", "acc")
        ]
        store.write_unit(
            "lmeval-rows",
            CheckpointRow(c["model"], c["revision"], c["step"], c["commit_sha"], "pico", "xs", 0),
            # float32, as the run's cells: a second dtype would be a series of its own.
            [CellRow(key, c["commit_sha"], "lm_eval", 1, "{}", "lmeval", None, "cpu", DTYPE, 0.0)],
            metrics,
            [],
        )
    return root / "results.duckdb"


def independent_series(rows: list[dict]) -> tuple[dict, dict]:
    """{(model, metric, layer, input_set): {step: value}} of the representation metrics, layer
    means included, and {(model, task, capability_metric, shots): {step: value}} of the task
    accuracies, from plain dicts."""
    metric = defaultdict(lambda: defaultdict(list))  # series key -> step -> values
    accuracy = defaultdict(lambda: defaultdict(list))
    wanted = {("lm_eval", "acc"), ("lm_eval", "acc_norm"), ("icl", "accuracy")}
    for r in rows:
        if r["item"] is not None or r["value"] is None or not math.isfinite(r["value"]):
            continue
        name = f"{r['analysis']}/{r['metric']}"
        if r["analysis"] in ("lm_eval", "icl"):
            if (r["analysis"], r["metric"]) in wanted and r["task"] is not None:
                accuracy[(r["model"], r["task"], name, r["shots"])][r["step"]].append(r["value"])
        elif r["task"] is None and r["metric"] not in report.BOOKKEEPING:  # counts: not drawn
            layer = None if r["layer"] is None else str(r["layer"])
            key = (r["model"], name, layer, r["input_set"])
            metric[key][r["step"]].append(r["value"])
    metric = {k: {s: mean(v) for s, v in by_step.items()} for k, by_step in metric.items()}
    accuracy = {k: {s: mean(v) for s, v in by_step.items()} for k, by_step in accuracy.items()}
    layers = defaultdict(dict)  # (model, metric, input_set) -> layer -> series
    for (model, name, layer, input_set), series in metric.items():
        if layer is not None:
            layers[(model, name, input_set)][layer] = series
    for (model, name, input_set), by_layer in layers.items():
        if len(by_layer) > 1:
            steps = set.intersection(*(set(s) for s in by_layer.values()))
            metric[(model, name, "mean", input_set)] = {
                s: mean(series[s] for series in by_layer.values()) for s in steps
            }
    return metric, accuracy


def independent_spearman(rows: list[dict]) -> dict[tuple, tuple[float, int]]:
    """The correlation table from independent_series and scipy.stats.spearmanr."""
    metric, accuracy = independent_series(rows)
    expected = {}
    for (model, name, layer, input_set), x in metric.items():
        for (model_y, task, capability, shots), y in accuracy.items():
            common = sorted(set(x) & set(y)) if model == model_y else []
            if len(common) < 3:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", stats.ConstantInputWarning)
                rho = stats.spearmanr([x[s] for s in common], [y[s] for s in common]).statistic
            if math.isfinite(rho):
                key = (model, name, layer, input_set, task, capability, shots)
                expected[key] = (float(rho), len(common))
    return expected


def keyed(table: pl.DataFrame) -> dict[tuple, tuple[float, int]]:
    return {
        tuple(r[k] for k in KEYS): (r["rho"], r["n_steps"]) for r in table.iter_rows(named=True)
    }


def hand_rows(template: dict, schema: pl.Schema) -> pl.DataFrame:
    """More rows in the results view's shape, made here: an lm_eval task with three tied
    values, and per-item anisotropy rows (which must change nothing)."""
    rows = []
    for step, acc in zip(STEPS, [0.4, 0.4, 0.4, 0.7, 0.7, 0.9], strict=True):
        rows.append({**template, "step": step, "analysis": "lm_eval", "metric": "acc",
                     "value": acc, "layer": None, "item": None, "task": "hand_mc", "shots": 0,
                     "task_seed": None, "input_set": None, "params_hash": "lmeval"})  # fmt: skip
        rows.append({**template, "step": step, "analysis": "anisotropy", "metric": "anisotropy",
                     "value": 100.0 * step, "layer": 1, "item": 7, "task": None, "shots": None,
                     "task_seed": None, "input_set": "prose"})  # fmt: skip
    return pl.DataFrame(rows, schema=schema)


def test_correlation_table_is_scipys_spearman_of_the_stored_rows(db):
    stored = ResultStore(db).query("SELECT * FROM results")
    rows = pl.concat([stored, hand_rows(stored.row(0, named=True), stored.schema)])
    table = correlation_table(rows)
    assert table.columns == CORRELATION_COLUMNS
    got, expected = keyed(table), independent_spearman(rows.to_dicts())
    assert set(got) == set(expected)
    for key, (rho, n) in expected.items():
        assert got[key][0] == pytest.approx(rho, abs=1e-12) and got[key][1] == n, key
    assert table["rho"].abs().to_list() == sorted(table["rho"].abs().to_list(), reverse=True)

    # What the series are: both kinds of task accuracy, layer means, nothing else.
    tasks = set(table.select("task", "capability_metric", "shots").unique().rows())
    assert tasks == {
        ("pico_python_mc", "lm_eval/acc", 0),
        ("pico_python_mc", "lm_eval/acc_norm", 0),
        ("pico_python_mc", "lm_eval/acc", 5),
        ("hand_mc", "lm_eval/acc", 0),
        ("category", "icl/accuracy", 0),
        ("category", "icl/accuracy", 4),
    }  # not flat_task (constant), short_task (2 steps), acc_stderr, perplexity, doc_ rows
    assert set(table.filter(pl.col("shots") == 5)["n_steps"]) == {5}  # the NaN step left out
    layers = set(table.filter(pl.col("metric") == "anisotropy/anisotropy")["layer"])
    assert layers == {"0", "1", "2", "mean"}
    assert set(table.filter(pl.col("metric") == "saturation/cross_entropy")["layer"]) == {None}
    assert "saturation/num_predicted_tokens" not in set(table["metric"])
    tied = table.filter((pl.col("task") == "hand_mc") & (pl.col("layer") == "mean"))
    assert tied.height > 0 and set(tied["n_steps"]) == {len(STEPS)}
    # The per-item rows changed nothing: the table without them is the same.
    assert keyed(correlation_table(rows.filter(pl.col("item").is_null()))) == got


def test_spearman_is_scipys_on_ties_and_at_random():
    """``spearman``, the one Spearman rho of the report (``correlation_table`` and the figures
    use it), is scipy.stats.spearmanr in float64: tied values get their average rank, each
    group (a null key too) is its own series, and a group too short or constant has no rho."""
    rng = np.random.default_rng(20260101)
    cases = {  # (group, subgroup): (x, y)
        ("ties", "a"): ([1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 7.0, 0.5],
                        [0.4, 0.4, 0.1, 0.9, 0.4, 0.7, 0.7, 0.2]),
        ("ties", None): ([5.0, 5.0, 1.0, 1.0, 2.0, 9.0], [0.3, 0.3, 0.3, 0.1, 0.9, 0.9]),
        ("random", "a"): (rng.normal(size=200).tolist(), rng.normal(size=200).tolist()),
        ("random", "b"): (rng.random(3).tolist(), rng.random(3).tolist()),  # MIN_STEPS
        ("random", "c"): (
            np.round(rng.normal(size=60), 1).tolist(), np.round(rng.normal(size=60), 1).tolist()
        ),  # rounded: many ties
    }  # fmt: skip
    dropped = {
        ("short", "a"): ([1.0, 2.0], [2.0, 1.0]),
        ("constant", "a"): ([1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]),
    }
    rows = [
        {"group": g, "subgroup": s, "value": x, "value_y": y}
        for (g, s), (xs, ys) in (cases | dropped).items()
        for x, y in zip(xs, ys, strict=True)
    ]
    schema = {"group": pl.String, "subgroup": pl.String, "value": pl.Float64,
              "value_y": pl.Float64}  # fmt: skip
    frame = pl.DataFrame(rows, schema=schema).sample(fraction=1.0, shuffle=True, seed=3)
    table = spearman(frame, ["group", "subgroup"])  # rows shuffled: no order assumed
    assert table.schema["rho"] == pl.Float64 and table.schema["n_steps"] == pl.Int64
    got = {
        (r["group"], r["subgroup"]): (r["rho"], r["n_steps"]) for r in table.iter_rows(named=True)
    }
    assert set(got) == set(cases)
    for key, (xs, ys) in cases.items():
        want = stats.spearmanr(xs, ys).statistic
        assert got[key][0] == pytest.approx(want, rel=0, abs=1e-14) and got[key][1] == len(xs), key
    assert len(set(cases[("random", "c")][0])) < 60  # the rounded case has ties indeed


def test_the_docs_query_gives_the_same_numbers(db):
    store = ResultStore(db)
    table = correlation_table(select_rows(store, resolve_selection(store, "corr")))
    by_sql = store.user_query(SPEARMAN_SQL)  # what `ckptlab query "..."` runs
    assert all(f"'{name}'" in SPEARMAN_SQL for name in report.BOOKKEEPING)  # left out alike
    assert by_sql.columns == CORRELATION_COLUMNS
    got, want = keyed(by_sql), keyed(table)
    assert set(got) == set(want) and len(want) > 50
    for key, (rho, n) in want.items():
        assert got[key][0] == pytest.approx(rho, abs=1e-9) and got[key][1] == n, key


def test_linearity_against_removal_cost_is_the_join_of_the_stored_rows(db):
    store = ResultStore(db)
    frame = linearity_cost(store.query("SELECT * FROM results"))
    assert frame.columns == [
        "model", "input_set", "dtype", "seed", "stage", "step", "x", "block", "linearity",
        "removal_cost", "linear_cost",
    ]  # fmt: skip
    assert frame["x"].to_list() == [float(s) for s in frame["step"]]  # single-stage: x = step
    frame = frame.select(
        "model", "input_set", "step", "block", "linearity", "removal_cost", "linear_cost"
    )
    rows = store.query(
        "SELECT model, input_set, step, layer, metric, value FROM results"
        " WHERE analysis IN ('linearity', 'block_ablation') AND item IS NULL"
    ).rows()
    value = {(m, i, s, k, metric): v for m, i, s, k, metric, v in rows}
    expected = {}
    for (m, i, s, k, metric), v in value.items():
        if metric == "linearity":  # pair (k, k + 1) is block k + 1
            intact = value[(m, i, s, None, "cross_entropy")]
            expected[(m, i, s, k + 1)] = (
                v,
                value[(m, i, s, k + 1, "cross_entropy_skip")] - intact,
                value[(m, i, s, k + 1, "cross_entropy_linear")] - intact,
            )
    got = {r[:4]: r[4:] for r in frame.rows()}
    assert set(got) == set(expected) and len(got) == 2 * len(STEPS)  # pico xs: two blocks
    for key, want in expected.items():
        assert got[key] == pytest.approx(want, abs=1e-12)


def test_the_report_has_the_table_the_csv_and_the_figures(db, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", "corr", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Spearman correlations over checkpoints" in result.output
    names = ["correlation__pico-xs", "correlation_scatter__pico-xs", "linearity_cost__pico-xs"]
    for name in names:
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.svg").exists()
    document = json.loads((out / "figures.json").read_text())
    assert "correlations.csv" in document["files"]

    store = ResultStore(db)
    rows = select_rows(store, resolve_selection(store, "corr"))
    table = correlation_table(rows)
    csv = pl.read_csv(out / "correlations.csv", schema_overrides={"layer": pl.String})
    assert csv.columns == CORRELATION_COLUMNS and csv.height == table.height
    assert csv.select(KEYS).rows() == table.select(KEYS).rows()
    assert csv["rho"].to_list() == pytest.approx(table["rho"].to_list(), abs=1e-12)

    page = (out / "index.html").read_text()
    assert page.count('<table class="correlations">') == 1 and "correlations.csv" in page
    for name in names:
        assert f'<figure id="{name}">' in page
    figures = {f["name"]: f for f in document["figures"]}
    heat = figures["correlation__pico-xs"]
    top = table.row(0, named=True)
    assert heat["rho"][0][heat["column_keys"].index([top[k] for k in KEYS[4:]])] == top["rho"]
    header = re.search(r'<table class="correlations"><tr>(.*?)</tr>', page, re.S).group(1)
    assert (
        header.count("<th>") == 1 + len(heat["columns"]) and "pico_python_mc acc, 5-shot" in header
    )

    # The scatter plots draw the series' stored values, strongest pair first, one per
    # (metric, task accuracy) whatever the layer.
    metric, accuracy = independent_series(store.query("SELECT * FROM results").to_dicts())
    panels = figures["correlation_scatter__pico-xs"]["panels"]
    assert len(panels) == 4 and panels[0]["rho"] == top["rho"]
    families = [(p["metric"], p["task"], p["capability_metric"], p["shots"]) for p in panels]
    assert len(set(families)) == 4
    # No panel repeats another: against the same accuracy, no two metrics rank the
    # checkpoints alike (or in mirror), as a monotone map of a drawn metric would.
    orders = defaultdict(set)
    for p in panels:
        ranks = stats.rankdata(p["x"])
        against = (p["task"], p["capability_metric"], p["shots"], tuple(p["steps"]))
        assert not {tuple(ranks), tuple(len(ranks) + 1 - ranks)} & orders[against], p
        orders[against].add(tuple(ranks))
    for p in panels:
        x = metric[(MODEL, p["metric"], p["layer"], p["input_set"])]
        y = accuracy[(MODEL, p["task"], p["capability_metric"], p["shots"])]
        assert p["steps"] == sorted(set(x) & set(y)) and len(p["steps"]) == p["n_steps"]
        assert p["x"] == pytest.approx([x[s] for s in p["steps"]], abs=1e-12)
        assert p["y"] == pytest.approx([y[s] for s in p["steps"]], abs=1e-12)
    blocks = figures["linearity_cost__pico-xs"]["blocks"]
    assert [b["block"] for b in blocks] == [1, 2] and all(b["step"] == STEPS for b in blocks)


def test_every_benchmark_accuracy_gets_a_column_then_icl_by_strength(db, monkeypatch):
    """lm_eval accuracies are always in the heatmap, a weak one too; ICL fills the rest."""
    store = ResultStore(db)
    rows = select_rows(store, resolve_selection(store, "corr"))
    table = correlation_table(rows).filter(pl.col("model") == MODEL)
    # One benchmark accuracy made weak (rho / 10): weaker than every ICL one.
    weak = (pl.col("task") == "pico_python_mc") & (pl.col("shots") == 5)
    table = table.with_columns(pl.when(weak).then(pl.col("rho") / 10).otherwise("rho").alias("rho"))
    strength = table.group_by("task", "capability_metric", "shots").agg(pl.col("rho").abs().max())
    benchmark = strength.filter(~pl.col("capability_metric").str.starts_with("icl/"))
    icl = strength.filter(pl.col("capability_metric").str.starts_with("icl/")).sort("rho")
    assert benchmark.height == 3 and icl.height == 2  # mc acc/acc_norm 0-shot, acc 5-shot
    assert benchmark["rho"].min() < icl["rho"].min()  # a cap by |rho| alone would drop it
    for cap, icl_shown in ((3, []), (4, [icl.row(-1)[:3]])):
        monkeypatch.setattr(report.figures, "TABLE_COLUMNS", cap)  # where it is read
        [heat] = [f.data for f in report.correlation_figures(table, rows) if f.data["kind"]
                  == "correlation_heatmap"]  # fmt: skip
        keys = [tuple(k) for k in heat["column_keys"]]
        assert sorted(k for k in keys if not k[1].startswith("icl/")) == sorted(
            benchmark.select("task", "capability_metric", "shots").rows()
        )
        assert [k for k in keys if k[1].startswith("icl/")] == icl_shown


def test_a_monotone_copy_of_a_drawn_metric_gets_no_panel(db):
    """exp() of the strongest pair's metric has the same |rho| against every accuracy: a
    cap by strength alone would draw it next to its original."""
    store = ResultStore(db)
    rows = select_rows(store, resolve_selection(store, "corr"))
    top = correlation_table(rows).row(0, named=True)
    analysis, metric = top["metric"].split("/", 1)
    original = rows.filter((pl.col("analysis") == analysis) & (pl.col("metric") == metric))
    copy = original.with_columns(pl.lit(f"{metric}_exp").alias("metric"), pl.col("value").exp())
    rows = pl.concat([rows, copy])
    table = correlation_table(rows)
    twin = table.filter(pl.col("metric") == f"{top['metric']}_exp")
    assert twin.height > 0 and abs(twin["rho"].abs().max() - abs(top["rho"])) < 1e-12
    [scatter] = [f.data for f in report.correlation_figures(table, rows) if f.data["kind"]
                 == "correlation_scatter"]  # fmt: skip
    drawn = [p["metric"] for p in scatter["panels"]]
    assert drawn[0] in (top["metric"], f"{top['metric']}_exp") and len(drawn) == 4
    assert not {top["metric"], f"{top['metric']}_exp"} <= set(drawn)
