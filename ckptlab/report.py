"""Figures of a spec's (or one run's) results: a PNG and an SVG per figure, the plotted numbers
in ``figures.json``, and one self-contained ``index.html`` (PNGs embedded as base64, no
external resource).

What is selected:

- a **spec name**: every ``results`` row of a cell its runs planned (``run_cells``), whichever
  run computed it, this spec's or another's that shares the cell;
- a **run**: the rows of the cells it planned, and of its spec's, that existed when it
  finished (``computed_at`` <= its ``finished_at``; now, if it has not finished). A cell a
  rerun found already stored keeps the run_id of the run that computed it, so filtering on
  ``run_id`` alone would leave out everything cached.

Within it, each analysis is read at its latest ``analysis_version`` (older versions' cells stay
in the database); several parameter sets, input sets or dtypes of one analysis become separate
lines (or panels), labelled by input set, params hash and dtype: a float32 and a bfloat16 cell
of one checkpoint are two measurements, never averaged. Per-item rows (``item`` not NULL) are
not drawn.

A checkpoint is its (seed, stage, step), in training order: stage (``catalog.stage_rank``),
then step. Some suites restart the step count in a later stage (OLMo 2's stage 2,
CrystalCoder's phases), so the step alone would merge stage-1 step N with stage-2 step N. The
seed tells apart runs inside one repo (OLMo 2's stage-2 ingredients): one line (panel) each.

Figures (matplotlib, Agg, colorblind-safe: Okabe-Ito lines, viridis maps):

- ``saturation``: cross-entropy vs step; ``lm_head_singular_entropy``: KL(p‖uniform) of the
  LM head's normalised singular values vs step (the legend says which models' heads are tied
  to the input embeddings, as on every ``singular_entropy`` figure);
- ``line__<analysis>__<metric>``: every other scalar or per-layer metric (``task`` NULL) vs
  step, one line per model (colour = size, line style = seed); a per-layer metric is drawn at
  each model's **last layer** (the legend names it), the heatmaps show every layer. The x axis
  is the training step on matplotlib's ``symlog`` scale with ``linthresh=1`` (linear on [0, 1],
  logarithmic above), so step 0 is drawn as itself, not shifted. Where some model's steps
  restart in a later stage, the step is no axis: x is the tokens seen where every checkpoint
  has them, else the checkpoint's index in training order (ticks name stage and step);
- ``heatmap__<analysis>__<metric>``: layer × checkpoint for metrics with several layers, one
  panel per model, one colour scale per figure; columns are the checkpoints in training order;
- ``icl__<model>``: ICL accuracy vs number of demonstrations, a few checkpoints (colour =
  training order), mean over task seeds, chance (``chance_accuracy``) and the bag-of-words
  baseline (``bow_accuracy``, mean over the drawn checkpoints), one panel per task;
- ``linearity_cost__<model>``: each block's linearity (``linearity`` at layer k - 1) against
  what removing it costs (``block_ablation``: CE with the block skipped, or replaced by its
  fitted linear map, minus the intact CE), one point per (block, checkpoint), coloured by
  training order;
- what predicts what: per model, Spearman rho across checkpoints between every representation
  metric (per layer and mean over layers) and every task accuracy (lm_eval acc / acc_norm,
  ICL accuracy averaged over task seeds; ``correlation_table``), as a table (top TABLE_ROWS
  metrics; all of it in ``correlations.csv``), a heatmap ``correlation__<model>`` and scatter
  plots of the strongest pairs ``correlation_scatter__<model>``. ``SPEARMAN_SQL`` is the same
  table as one DuckDB query;
- a table of the selected runs' ``failures`` in the HTML.

Duplicate checkpoints (``duplicate_of``) are drawn and correlated as the checkpoints they are.

``render_report`` never raises because data is partial or odd: a figure it cannot draw is
skipped with a note in the HTML. It raises ``ReportError`` only when there is nothing to select
from (no database, no such run, neither a spec name nor a run).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ckptlab.catalog import stage_rank
from ckptlab.results import ResultStore

DPI = 100
# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency. Yellow last.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#000000", "#F0E442")
LINESTYLES = ("-", "--", ":", "-.")
# Counts a run records for bookkeeping: constant over training, not worth a figure.
BOOKKEEPING = frozenset(
    {"num_predicted_tokens", "lm_head_rows", "twonn_points", "neurons", "num_clusters"}
)
NAMED = {
    ("saturation", "cross_entropy"): (
        "saturation",
        "Saturation: cross-entropy (nats/token) over training",
        "cross-entropy (nats/token)",
    ),
    ("singular_entropy", "singular_entropy"): (
        "lm_head_singular_entropy",
        "LM-head singular entropy: KL(p ‖ uniform) of normalised singular values",
        "singular entropy (nats)",
    ),
}
ICL_STEPS = 5  # checkpoints drawn per ICL figure, spread over the checkpoints' order
# Task accuracies ("capabilities") a representation metric is correlated with, per analysis.
CAPABILITIES = {"lm_eval": ("acc", "acc_norm"), "icl": ("accuracy",)}
MIN_STEPS = 3  # common checkpoints a Spearman rho needs
# A checkpoint within one model: steps restart in a later stage of some suites (OLMo 2's stage
# 2, CrystalCoder's phases) and a seed is a run of its own (OLMo 2's stage-2 ingredients).
CHECKPOINT = ["seed", "stage", "step"]
ORDER = ["stage_rank", "stage", "step"]  # training order within one seed
# Columns the results view gained over time: NULL where an older database's view lacks them.
NEWER_COLUMNS = {"stage": "VARCHAR", "tokens_seen": "BIGINT", "dtype": "VARCHAR",
                 "tied_head": "BOOLEAN"}  # fmt: skip
# Analyses of the LM head: where it is the input embedding matrix, the figures say so.
HEAD_ANALYSES = frozenset({"singular_entropy"})
TIED = " (tied to the input embeddings)"
X_LABELS = {
    "step": "training step",
    "tokens": "tokens seen",
    "checkpoint": "checkpoint, in training order",
}
TABLE_ROWS = 30  # metrics per model in the HTML table and heatmap; correlations.csv has all
TABLE_COLUMNS = 20  # task accuracies likewise
SCATTER_PAIRS = 4  # strongest pairs drawn as scatter plots, per model
CORRELATION_SECTION = "What predicts what"
# Blue -> white -> vermillion (Okabe-Ito ends): a diverging map for rho in [-1, 1].
DIVERGING = ("#0072B2", "#FFFFFF", "#D55E00")
RC = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.fonttype": "path",  # no font needed to view the SVG
    "svg.hashsalt": "ckptlab",  # reproducible ids
}
_SIZE_WORDS = ("xxs", "xs", "s", "m", "l", "xl", "xxl")
_SIZE_UNITS = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


class ReportError(ValueError):
    """Nothing to report on (no database, unknown run, no selection); one line."""


@dataclass
class Selection:
    spec_name: str
    run_id: str | None = None
    until: dt.datetime | None = None  # rows computed at or before (a run's end)

    def describe(self) -> str:
        if self.run_id is None:
            return f"spec {self.spec_name!r}: every run"
        until = self.until.isoformat(sep=" ", timespec="seconds") if self.until else "now"
        return (
            f"run {self.run_id} of spec {self.spec_name!r}: the spec's cells computed by "
            f"{until} (its end)"
        )


@dataclass
class Figure:
    name: str  # file stem
    title: str
    section: str
    data: dict  # what is plotted, for figures.json
    draw: Callable  # (matplotlib Figure) -> None
    size: tuple[float, float] = (6.4, 4.0)


@dataclass
class Report:
    selection: Selection
    rows: int = 0
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: pl.DataFrame | None = None
    x: str = "step"  # step, tokens, or checkpoint (the index in training order)
    correlations: pl.DataFrame | None = None  # correlation_table; None: no task accuracies


# ------------------------------------------------------------------------- selecting


def resolve_selection(
    store: ResultStore, spec_name: str | None = None, run_id: str | None = None
) -> Selection:
    """The rows a report covers; ``run_id`` may be a unique prefix. ReportError when the
    database, the run or the spec is not there."""
    import duckdb

    if not store.path.exists():
        raise ReportError(f"no results database at {store.path}")
    try:
        runs = store.query("SELECT run_id, spec_name, finished_at FROM runs")
    except duckdb.Error as err:
        raise ReportError(f"{store.path}: no runs table ({_one_line(err)})") from None
    specs = sorted({name for name in runs["spec_name"] if name is not None})
    known = ", ".join(specs) or "none"
    if run_id is not None:
        runs = runs.filter(pl.col("run_id").str.starts_with(run_id))
        if runs.height == 0:
            raise ReportError(f"no run {run_id!r} in {store.path}")
        if runs.height > 1:
            raise ReportError(f"run id prefix {run_id!r} is ambiguous ({runs.height} runs)")
        run = runs.row(0, named=True)
        if spec_name is not None and spec_name != run["spec_name"]:
            raise ReportError(
                f"run {run['run_id']} is of spec {run['spec_name']!r}, not {spec_name!r}"
            )
        return Selection(run["spec_name"], run["run_id"], run["finished_at"])
    if spec_name is None:
        if len(specs) != 1:
            raise ReportError(f"name a spec or a run (specs in {store.path}: {known})")
        spec_name = specs[0]
    elif spec_name not in specs:
        raise ReportError(f"no run of spec {spec_name!r} in {store.path} (specs: {known})")
    return Selection(spec_name)


def select_rows(store: ResultStore, selection: Selection) -> pl.DataFrame:
    """The selection's non-item rows, each analysis at its latest version, in training order
    (``with_order``), with a ``variant`` column (input set / params hash / dtype, empty when
    an analysis has only one)."""
    # A spec's cells: those its runs planned (run_cells; a cell another spec's run computed
    # first counts too), and, from databases older than run_cells, those its runs computed.
    runs = "SELECT run_id FROM runs WHERE spec_name = ?"
    if selection.run_id is not None:
        runs = "SELECT run_id FROM runs WHERE run_id = ?"
    view = set(
        store.query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'results'"
        )["column_name"]
    )
    newer = ", ".join(
        name if name in view else f"CAST(NULL AS {kind}) AS {name}"
        for name, kind in NEWER_COLUMNS.items()
    )
    sql = (
        "SELECT model, size, seed, revision, step, analysis, analysis_version, params_hash,"
        f" input_set, layer, metric, value, task, shots, task_seed, {newer}"
        f" FROM results WHERE item IS NULL AND (cell_key IN (SELECT cell_key FROM run_cells"
        f" WHERE run_id IN ({runs})) OR spec_name = ?)"
    )
    params: list = [selection.run_id or selection.spec_name, selection.spec_name]
    if selection.run_id is not None and selection.until is not None:
        sql += " AND computed_at <= ?"
        params.append(selection.until)
    rows = store.query(sql, params)
    if rows.height == 0:
        return rows
    rows = rows.filter(
        pl.col("analysis_version") == pl.col("analysis_version").max().over("analysis")
    )
    rows = rows.with_columns(pl.col("input_set").fill_null(""))
    rows = with_order(rows)
    kinds = rows.group_by("analysis").agg(
        pl.col("input_set").n_unique().alias("_sets"),
        pl.col("params_hash").n_unique().alias("_params"),
        pl.col("dtype").drop_nulls().n_unique().alias("_dtypes"),
    )
    rows = rows.join(kinds, on="analysis")
    variant = pl.concat_str(
        pl.when(pl.col("_sets") > 1).then(pl.col("input_set")).otherwise(pl.lit("")),
        pl.when(pl.col("_params") > 1)
        .then(pl.lit("params ") + pl.col("params_hash").str.slice(0, 6))
        .otherwise(pl.lit("")),
        pl.when(pl.col("_dtypes") > 1)
        .then(pl.col("dtype").fill_null("dtype unknown"))
        .otherwise(pl.lit("")),
        separator=" ",
    ).str.strip_chars()
    return rows.with_columns(variant.alias("variant")).drop("_sets", "_params", "_dtypes")


def with_order(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with ``stage`` ("" where none, as polars joins on it) and ``stage_rank``, so
    that CHECKPOINT names a checkpoint and ORDER sorts a seed's checkpoints in training order.
    Rows without a stage column are single-stage; rows that have both are returned as they
    are."""
    if "stage_rank" in rows.columns:
        return rows
    if "stage" not in rows.columns:
        rows = rows.with_columns(pl.lit("").alias("stage"))
    rows = rows.with_columns(pl.col("stage").cast(pl.String).fill_null(""))
    ranks = {stage: stage_rank(stage or None) for stage in rows["stage"].unique()}
    rank = pl.col("stage").replace_strict(ranks, return_dtype=pl.Int64, default=1)
    return rows.with_columns(rank.alias("stage_rank"))


def restarting(rows: pl.DataFrame) -> list[str]:
    """The models whose steps do not grow along training order: a later stage counts from 0
    again (or two stages name one step). Over all of a model's seeds: OLMo 2's stage-2
    ingredients are seeds of their own, and their step 0 comes after stage 1."""
    seen = with_order(rows).select("model", *ORDER).unique().sort("model", *ORDER)
    back = seen.group_by("model", maintain_order=True).agg(
        (pl.col("step").diff() <= 0).any().alias("back")
    )
    return sorted(back.filter(pl.col("back"))["model"])


def checkpoint_name(stage: str | None, step: int | float) -> str:
    """'step 100', or 'stage2 step 100' where the checkpoint has a stage."""
    return f"{stage} step {step:g}" if stage else f"step {step:g}"


def with_x(rows: pl.DataFrame, x: str, notes: list[str]) -> tuple[pl.DataFrame, str]:
    """``rows`` (as ``select_rows``) with an ``x`` column and what it is: the step, or the
    checkpoint's ``tokens_seen`` where ``x`` is 'tokens' and it is known for every selected
    checkpoint (else the step, with a note). Where some model's steps restart in a later stage
    the step would draw two checkpoints at one x and a line going back: then x is the tokens
    seen where known for every checkpoint, else the checkpoint's index in training order
    ('checkpoint': every (stage, step) of the selection, 0, 1, ...), with a note."""
    rows = with_order(rows)
    unknown = rows.filter(pl.col("tokens_seen").is_null())
    tokens = rows.with_columns(pl.col("tokens_seen").cast(pl.Float64).alias("x"))
    restart = restarting(rows)
    if x == "tokens" and unknown.height == 0:
        return tokens, "tokens"
    if x == "tokens":
        count = unknown.select("model", "revision").n_unique()
        first = unknown.row(0, named=True)
        notes.append(
            f"x = tokens asked for, but tokens_seen is unknown for {count} checkpoint(s)"
            f" (e.g. {first['model']}@{first['revision']})" + ("" if restart else ": x = step")
        )
    elif x != "step":
        notes.append(f"unknown x {x!r}: x = step")
    if not restart:
        return rows.with_columns(pl.col("step").cast(pl.Float64).alias("x")), "step"
    why = f"steps restart in a later stage ({', '.join(restart)}), so the step is no axis"
    if unknown.height == 0:
        notes.append(f"{why}: x = tokens seen")
        return tokens, "tokens"
    order = rows.select(*ORDER).unique().sort(ORDER).with_row_index("x")
    notes.append(
        f"{why}, and tokens_seen is not known for every checkpoint: x = the checkpoint's"
        " index in training order (stage, then step; the ticks name them)"
    )
    return rows.join(order.with_columns(pl.col("x").cast(pl.Float64)), on=ORDER), "checkpoint"


# ------------------------------------------------------------------- preparing data


def size_key(size: str | None) -> tuple:
    """Sizes in model order: xs < s < m, 70m < 160m < 1.4b; unknown ones after, by name."""
    if size is None:
        return (2, 0.0, "")
    word = size.lower()
    if word in _SIZE_WORDS:
        return (0, float(_SIZE_WORDS.index(word)), word)
    found = re.fullmatch(r"([0-9.]+)([kmbt])", word)
    if found:
        return (1, float(found.group(1)) * _SIZE_UNITS[found.group(2)], word)
    return (2, 0.0, word)


def _models(rows: pl.DataFrame) -> list[dict]:
    """One dict per (model, seed, variant) in a stable order: size, seed, model name, variant.
    A model with several seeds is one repo holding several runs (OLMo 2's stage-2
    ingredients): a line (panel) each."""
    found = rows.select("model", "size", "seed", "variant").unique().to_dicts()
    return sorted(
        found,
        key=lambda m: (size_key(m["size"]), m["seed"] or 0, m["model"], m["variant"]),
    )


def _key(m: dict) -> tuple:
    return (m["model"], m["seed"], m["variant"])


def _of(frame: pl.DataFrame, m: dict) -> pl.DataFrame:
    """The rows of one (model, seed, variant) of ``_models``."""
    return frame.filter(
        (pl.col("model") == m["model"])
        & pl.col("seed").eq_missing(m["seed"])
        & (pl.col("variant") == m["variant"])
    )


def _labels(models: list[dict]) -> dict[tuple, str]:
    """Per ``_key``: the model's short name, its seed where the model has several, the
    variant in brackets."""
    seeds: dict[str, set] = {}
    for m in models:
        seeds.setdefault(m["model"], set()).add(m["seed"])
    labels = {}
    for m in models:
        label = m["model"].rsplit("/", 1)[-1]
        if len(seeds[m["model"]]) > 1:
            label += f" seed {m['seed']}"
        labels[_key(m)] = f"{label} [{m['variant']}]" if m["variant"] else label
    return labels


def _tied(analysis: str, tied_head) -> str:
    """What a figure of the LM head (singular_entropy) says of a head that is the input
    embedding matrix: its spectrum is the embeddings', not a head's of its own."""
    return TIED if analysis in HEAD_ANALYSES and tied_head else ""


def line_series(rows: pl.DataFrame) -> pl.DataFrame:
    """Per (analysis, metric, model, seed, variant): ``x`` and ``value`` of the scalar metrics
    (layer NULL) and of per-layer metrics at the model's last layer, one row per checkpoint
    in training order. Columns: analysis, metric, model, variant, size, seed, layer,
    stage_rank, stage, step, x, value (mean over any repeats: revisions at one checkpoint),
    tied_head (True where some checkpoint's head is tied to its input embeddings)."""
    columns = ["analysis", "metric", "model", "variant", "size", "seed", "layer", *ORDER, "x",
               "value", "tied_head"]  # fmt: skip
    scalar = rows.filter(pl.col("task").is_null() & ~pl.col("metric").is_in(list(BOOKKEEPING)))
    if scalar.height == 0:
        return scalar.select(columns)
    keys = ["analysis", "metric", "model", "variant"]
    scalar = scalar.filter(
        pl.col("layer").is_null() | (pl.col("layer") == pl.col("layer").max().over(keys))
    )
    return (
        scalar.group_by([*keys, "size", "seed", "layer", *ORDER])
        .agg(pl.col("x").first(), pl.col("value").mean(), pl.col("tied_head").max())
        .sort([*keys, "seed", *ORDER], nulls_last=True)
        .select(columns)
    )


def heatmap_metrics(rows: pl.DataFrame) -> list[tuple[str, str]]:
    """(analysis, metric) pairs with more than one layer for some model."""
    per_layer = rows.filter(
        pl.col("task").is_null()
        & pl.col("layer").is_not_null()
        & ~pl.col("metric").is_in(list(BOOKKEEPING))
    )
    if per_layer.height == 0:
        return []
    counts = per_layer.group_by("analysis", "metric", "model", "variant").agg(
        pl.col("layer").n_unique().alias("layers")
    )
    many = counts.filter(pl.col("layers") > 1).select("analysis", "metric").unique()
    return sorted(many.iter_rows())


def heatmap_panels(rows: pl.DataFrame, analysis: str, metric: str) -> list[dict]:
    """One panel per (model, seed, variant): checkpoints (columns, in training order: x,
    steps, stages), layers (rows), values [layer][checkpoint] with None where a cell is
    missing."""
    chosen = rows.filter(
        (pl.col("analysis") == analysis) & (pl.col("metric") == metric) & pl.col("task").is_null()
    )
    models = _models(chosen)
    labels = _labels(models)
    panels = []
    for m in models:
        part = _of(chosen, m).filter(pl.col("layer").is_not_null())
        if part.height == 0:
            continue
        cells = part.group_by("layer", *ORDER).agg(pl.col("x").first(), pl.col("value").mean())
        columns = cells.select(*ORDER, "x").unique(ORDER).sort(ORDER)
        checkpoints = columns.select("stage", "step").rows()
        layers = sorted(cells["layer"].unique().to_list())
        lookup = {
            (r["layer"], r["stage"], r["step"]): r["value"] for r in cells.iter_rows(named=True)
        }
        values = [[_finite(lookup.get((layer, *c))) for c in checkpoints] for layer in layers]
        panels.append(
            {
                "model": m["model"],
                "seed": m["seed"],
                "variant": m["variant"],
                "label": labels[_key(m)] + _tied(analysis, part["tied_head"].max()),
                "x": columns["x"].to_list(),
                "steps": columns["step"].to_list(),
                "stages": [stage or None for stage in columns["stage"]],
                "layers": layers,
                "values": values,
            }
        )
    return panels


def icl_table(rows: pl.DataFrame) -> pl.DataFrame:
    """Per (model, seed, variant, task, checkpoint, shots): accuracy, chance_accuracy and
    bow_accuracy, each the mean over task seeds (null where the analysis stored none, e.g. a
    shot count beyond the context), and the number of task seeds averaged; in training order."""
    icl = rows.filter(
        pl.col("task").is_not_null()
        & pl.col("shots").is_not_null()
        & pl.col("metric").is_in(["accuracy", "chance_accuracy", "bow_accuracy"])
    )
    keys = ["model", "size", "seed", "variant", "task", *ORDER, "shots"]
    return (
        icl.group_by(keys)
        .agg(
            pl.col("x").first(),
            pl.col("value").filter(pl.col("metric") == "accuracy").mean().alias("accuracy"),
            pl.col("value").filter(pl.col("metric") == "chance_accuracy").mean().alias("chance"),
            pl.col("value").filter(pl.col("metric") == "bow_accuracy").mean().alias("bow"),
            pl.col("task_seed").filter(pl.col("metric") == "accuracy").n_unique().alias("seeds"),
        )
        .filter(pl.col("accuracy").is_not_null())
        .sort(keys, nulls_last=True)
    )


def pick_steps(steps: list, n: int = ICL_STEPS) -> list:
    """``n`` of the sorted ``steps`` (steps, or checkpoints as (stage rank, stage, step)),
    evenly spread over their order, first and last kept."""
    steps = sorted(set(steps))
    if len(steps) <= n:
        return steps
    return sorted({steps[round(i * (len(steps) - 1) / (n - 1))] for i in range(n)})


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# -------------------------------------------------------------- what predicts what

# The correlation table in one DuckDB query over the whole database (``ckptlab query``): every
# representation metric per layer and its mean over layers, against every task accuracy, with
# each analysis at its latest version. A checkpoint is its (seed, stage, step), as in the
# report (steps restart in a later stage of some suites). Where an analysis has several
# parameter sets it mixes them (the report keeps them apart), and it reads every spec's rows,
# not one spec's.
SPEARMAN_SQL = """
WITH latest AS (  -- non-item rows of each analysis's latest version
    SELECT * FROM results WHERE item IS NULL AND isfinite(value)
    QUALIFY analysis_version = max(analysis_version) OVER (PARTITION BY analysis)
), tagged AS (  -- a checkpoint: (seed, stage, step); ' [bfloat16]' where dtypes differ
    SELECT * REPLACE (coalesce(seed, -1) AS seed, coalesce(stage, '') AS stage),
        CASE WHEN count(DISTINCT dtype) OVER (PARTITION BY analysis) > 1
             THEN ' [' || coalesce(dtype, '?') || ']' ELSE '' END AS dtype_tag
    FROM latest
), per_layer AS (  -- representation metrics: one value per checkpoint and layer
    SELECT model, analysis || '/' || metric || dtype_tag AS metric,
           CAST(layer AS VARCHAR) AS layer, input_set, seed, stage, step, avg(value) AS x
    FROM tagged
    WHERE task IS NULL AND analysis NOT IN ('lm_eval', 'icl') AND metric NOT IN
          ('num_predicted_tokens', 'lm_head_rows', 'twonn_points', 'neurons', 'num_clusters')
    GROUP BY ALL
), layer_mean AS (  -- the mean over layers, at the checkpoints that have all of them
    SELECT model, metric, 'mean' AS layer, input_set, seed, stage, step, avg(x) AS x
    FROM per_layer WHERE layer IS NOT NULL GROUP BY model, metric, input_set, seed, stage, step
    QUALIFY count(*) > 1
        AND count(*) = max(count(*)) OVER (PARTITION BY model, metric, input_set)
), accuracy AS (  -- task accuracies: lm_eval acc and acc_norm, ICL mean over task seeds
    SELECT model, task, analysis || '/' || metric || dtype_tag AS capability_metric, shots,
           seed, stage, step, avg(value) AS y
    FROM tagged
    WHERE (analysis = 'lm_eval' AND metric IN ('acc', 'acc_norm'))
       OR (analysis = 'icl' AND metric = 'accuracy')
    GROUP BY ALL
), ranked AS (  -- tied values get the mean of the ranks they span: (lowest + highest) / 2
    SELECT *,
        (rank() OVER (pair ORDER BY x) + count(*) OVER pair + 1
            - rank() OVER (pair ORDER BY x DESC)) / 2 AS rank_x,
        (rank() OVER (pair ORDER BY y) + count(*) OVER pair + 1
            - rank() OVER (pair ORDER BY y DESC)) / 2 AS rank_y
    FROM (SELECT * FROM per_layer UNION ALL SELECT * FROM layer_mean)
    JOIN accuracy USING (model, seed, stage, step)
    WINDOW pair AS (PARTITION BY model, metric, layer, input_set, task, capability_metric, shots)
)
SELECT model, metric, layer, input_set, task, capability_metric, shots,
       corr(rank_x, rank_y) AS rho, count(*) AS n_steps
FROM ranked
GROUP BY ALL
HAVING count(*) >= 3 AND var_pop(rank_x) > 0 AND var_pop(rank_y) > 0
ORDER BY model, abs(rho) DESC, metric, layer, task, capability_metric, shots
"""
CORRELATION_COLUMNS = ["model", "metric", "layer", "input_set", "task", "capability_metric",
                       "shots", "rho", "n_steps"]  # fmt: skip


def _finite_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """Non-item rows with a finite value, in training order (``with_order``); input_set ""
    where none (a key polars joins on); ``x`` the step where the rows have no x yet;
    ``dtype_tag`` ' [bfloat16]' where the analysis has rows in several dtypes (two
    measurements of a checkpoint, not repeats to average), else ''."""
    if "item" in rows.columns:
        rows = rows.filter(pl.col("item").is_null())
    for name, kind in (("input_set", pl.String), ("dtype", pl.String), ("seed", pl.Int64)):
        if name not in rows.columns:
            rows = rows.with_columns(pl.lit(None, kind).alias(name))
    if "x" not in rows.columns:
        rows = rows.with_columns(pl.col("step").cast(pl.Float64).alias("x"))
    rows = with_order(rows.filter(pl.col("value").is_finite()))
    several = pl.col("dtype").drop_nulls().n_unique().over("analysis") > 1
    tag = pl.when(several).then(" [" + pl.col("dtype").fill_null("?") + "]").otherwise(pl.lit(""))
    return rows.with_columns(pl.col("input_set").fill_null(""), tag.alias("dtype_tag"))


def _with_params(rows: pl.DataFrame, column: str) -> pl.DataFrame:
    """``column``'s values as 'analysis/value', plus ' [params abc123]' where the analysis
    has several parameter sets among ``rows`` and ' [bfloat16]' where it has several dtypes
    (different series, not repeats to average)."""
    name = pl.col("analysis") + "/" + pl.col(column)
    if "params_hash" in rows.columns:
        several = pl.col("params_hash").n_unique().over("analysis") > 1
        tag = " [params " + pl.col("params_hash").str.slice(0, 6) + "]"
        name = name + pl.when(several).then(tag).otherwise(pl.lit(""))
    return rows.with_columns((name + pl.col("dtype_tag")).alias(column))


def representation_series(rows: pl.DataFrame) -> pl.DataFrame:
    """Per (model, metric, layer, input_set, checkpoint): the value of every representation
    metric, i.e. rows with no task and no item, of analyses other than lm_eval and icl,
    bookkeeping counts left out. ``metric`` is 'analysis/metric'; ``layer`` a string: the
    layer, NULL for a scalar metric, or 'mean', the mean over layers at the checkpoints that
    have all of them (for metrics with several layers); ``input_set`` "" where none. A
    checkpoint is its CHECKPOINT (seed, stage, step); ``x`` is its place on the report's
    axis. Repeats (several revisions at one checkpoint) are averaged."""
    rep = _finite_rows(rows).filter(
        pl.col("task").is_null()
        & ~pl.col("analysis").is_in(list(CAPABILITIES))
        & ~pl.col("metric").is_in(list(BOOKKEEPING))
    )
    rep = _with_params(rep, "metric").with_columns(pl.col("layer").cast(pl.String))
    keys = ["model", "metric", "layer", "input_set"]
    at = [*CHECKPOINT, "stage_rank"]
    per_layer = rep.group_by(*keys, *at).agg(pl.col("x").first(), pl.col("value").mean())
    mean = (
        per_layer.filter(pl.col("layer").is_not_null())
        .group_by("model", "metric", "input_set", *at)
        .agg(pl.col("x").first(), pl.col("value").mean(), pl.len().alias("layers"))
        .filter(
            (pl.col("layers") > 1)
            & (pl.col("layers") == pl.col("layers").max().over("model", "metric", "input_set"))
        )
        .with_columns(pl.lit("mean").alias("layer"))
    )
    columns = [*keys, *at, "x", "value"]
    return pl.concat([per_layer.select(columns), mean.select(columns)]).sort(
        *keys, "seed", *ORDER, nulls_last=True
    )


def capability_series(rows: pl.DataFrame) -> pl.DataFrame:
    """Per (model, task, capability_metric, shots, checkpoint): task accuracy, i.e. lm_eval's
    acc and acc_norm per task and num_fewshot (``shots``), and icl's accuracy per task and
    shots, the mean over task seeds. ``capability_metric`` is 'lm_eval/acc', 'icl/accuracy',
    ...; a checkpoint and ``x`` as in ``representation_series``."""
    wanted = pl.lit(False)
    for analysis, metrics in CAPABILITIES.items():
        wanted = wanted | ((pl.col("analysis") == analysis) & pl.col("metric").is_in(metrics))
    cap = _finite_rows(rows).filter(wanted & pl.col("task").is_not_null())
    cap = _with_params(cap.rename({"metric": "capability_metric"}), "capability_metric")
    keys = ["model", "task", "capability_metric", "shots"]
    return (
        cap.group_by(*keys, *CHECKPOINT, "stage_rank")
        .agg(pl.col("x").first(), pl.col("value").mean())
        .sort(*keys, "seed", *ORDER, nulls_last=True)
    )


def _pairs(metrics: pl.DataFrame, capabilities: pl.DataFrame, on: list[str]) -> pl.DataFrame:
    """Metric values (``value``) next to accuracies (``value_y``) at the checkpoints both
    have; a seed of None matches None."""
    return metrics.join(capabilities.drop("x", "stage_rank"), on=on, suffix="_y", nulls_equal=True)


def _spearman(metrics: pl.DataFrame, capabilities: pl.DataFrame) -> pl.DataFrame:
    """rho of every (metric series, accuracy series) pair of one model, over their common
    checkpoints."""
    keys = ["model", "metric", "layer", "input_set", "task", "capability_metric", "shots"]
    pairs = _pairs(metrics, capabilities, ["model", *CHECKPOINT])
    table = (
        pairs.with_columns(  # Spearman = Pearson of the ranks; ties get their average rank
            pl.col("value").rank("average").over(keys).alias("rank_x"),
            pl.col("value_y").rank("average").over(keys).alias("rank_y"),
        )
        .group_by(keys)
        .agg(pl.corr("rank_x", "rank_y").alias("rho"), pl.len().cast(pl.Int64).alias("n_steps"))
        .filter((pl.col("n_steps") >= MIN_STEPS) & pl.col("rho").is_finite())  # constant: NaN
    )
    return (
        table.with_columns(
            pl.when(pl.col("input_set") != "").then(pl.col("input_set")).alias("input_set"),
            pl.col("shots").cast(pl.Int64),
        )
        .sort(
            pl.col("model"),
            pl.col("rho").abs(),
            *keys[1:],
            descending=[False, True, *([False] * 6)],
            nulls_last=True,
        )
        .select(CORRELATION_COLUMNS)
    )


def correlation_table(rows: pl.DataFrame) -> pl.DataFrame:
    """Spearman rho across checkpoints, per model, between every representation metric
    (``representation_series``) and every task accuracy (``capability_series``), over the
    checkpoints where both have a finite value: ranks averaged over ties (as
    scipy.stats.spearmanr), then Pearson. A checkpoint is its (seed, stage, step): stage-1 step
    N and stage-2 step N are two. A pair with fewer than MIN_STEPS common checkpoints, or a
    constant series, has no entry. ``rows``: results-view rows of one analysis version each
    (as ``select_rows``); item rows are ignored. Columns: CORRELATION_COLUMNS (``n_steps``:
    the checkpoints), by model, then |rho| descending."""
    return _spearman(representation_series(rows), capability_series(rows))


LINEARITY_COST_COLUMNS = ["model", "input_set", "dtype", *CHECKPOINT, "x", "block", "linearity",
                          "removal_cost", "linear_cost"]  # fmt: skip


def linearity_cost(rows: pl.DataFrame) -> pl.DataFrame:
    """Per (model, input_set, dtype, checkpoint, block): block k's linearity (``linearity`` at
    layer k - 1, the pair hidden_states[k-1] -> hidden_states[k]) next to what removing it
    costs: removal_cost = cross_entropy_skip(k) - cross_entropy, linear_cost =
    cross_entropy_linear(k) - cross_entropy (block_ablation; layer k = block k, the intact CE
    at no layer). Only (block, checkpoint)s both analyses measured on the same input set in
    the same dtype; repeats averaged. A checkpoint is its (seed, stage, step), ``x`` its place
    on the report's axis; rows in training order."""
    base = _finite_rows(rows).filter(pl.col("task").is_null())
    at = ["model", "input_set", "dtype", *CHECKPOINT, "stage_rank"]

    def series(analysis: str, metric: str, name: str, shift: int | None = 0) -> pl.DataFrame:
        # shift: block = layer + shift; None: the row at no layer
        part = base.filter((pl.col("analysis") == analysis) & (pl.col("metric") == metric))
        if shift is None:
            return (
                part.filter(pl.col("layer").is_null())
                .group_by(at)
                .agg(pl.col("x").first(), pl.col("value").mean().alias(name))
            )
        part = part.filter(pl.col("layer").is_not_null())
        block = (pl.col("layer").cast(pl.Int64) + shift).alias("block")
        return part.group_by(*at, block).agg(pl.col("value").mean().alias(name))

    def join(left: pl.DataFrame, right: pl.DataFrame, on: list[str], how="inner"):
        return left.join(right, on=on, how=how, nulls_equal=True)

    joined = join(
        series("linearity", "linearity", "linearity", shift=1),
        series("block_ablation", "cross_entropy_skip", "skip"),
        [*at, "block"],
    )
    joined = join(joined, series("block_ablation", "cross_entropy", "intact", shift=None), at)
    joined = join(
        joined, series("block_ablation", "cross_entropy_linear", "linear"), [*at, "block"], "left"
    )
    return (
        joined.with_columns(
            pl.when(pl.col("input_set") != "").then(pl.col("input_set")).alias("input_set"),
            (pl.col("skip") - pl.col("intact")).alias("removal_cost"),
            (pl.col("linear") - pl.col("intact")).alias("linear_cost"),
        )
        .sort("model", "input_set", "dtype", "seed", "block", *ORDER, nulls_last=True)
        .select(*LINEARITY_COST_COLUMNS)
    )


# ------------------------------------------------------------------------- drawing


def _metric_title(analysis: str, metric: str) -> str:
    return metric if metric.startswith(analysis) else f"{analysis}: {metric}"


def _count(value: float) -> str:
    """1500 -> '1.5k', 2e9 -> '2B': token counts at a glance."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value:g}"


def _linthresh(x: str, xs: list[float]) -> float:
    """Where the symlog axis turns logarithmic: 1 for steps; for tokens the power of ten at or
    below the smallest positive count."""
    positive = [v for v in xs if v and v > 0]
    if x == "tokens" and positive:
        return 10.0 ** math.floor(math.log10(min(positive)))
    return 1.0


def _tick(x: str, value: float, names: dict[float, str]) -> str:
    """A tick's text: the step, the tokens seen ('1.5B'), or the checkpoint's stage and step."""
    if x == "checkpoint":
        return names.get(value, "")
    return f"{value:g}" if x == "step" else _count(value)


def _names(xs: list[float], stages: list, steps: list) -> dict[float, str]:
    """x -> 'stage2 100' (or '100' without a stage): the ticks of the checkpoint axis."""
    return {
        x: f"{stage} {step:g}" if stage else f"{step:g}"
        for x, stage, step in zip(xs, stages, steps, strict=True)
    }


def _x_axis(axis, x: str, xs: list[float], names: dict[float, str] | None = None) -> None:
    """Symlog x for steps and tokens: linear on [0, linthresh] (half a decade wide),
    logarithmic above, so the first checkpoint (step 0) is drawn where it is (``_linthresh``).
    Ticks at 0 and every decade. For x = checkpoint (the index in training order, where steps
    restart): linear, at most 12 ticks, each naming the checkpoint's stage and step."""
    from matplotlib.ticker import FixedLocator, FuncFormatter

    if x == "checkpoint":
        names = names or {}
        at = sorted(set(xs))
        every = max(1, math.ceil(len(at) / 12))
        axis.xaxis.set_major_locator(FixedLocator(at[::every]))
        axis.xaxis.set_minor_locator(FixedLocator(at))
        axis.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick(x, v, names)))
        axis.tick_params(axis="x", labelrotation=40)
        axis.set_xlabel("checkpoint in training order: stage, step (evenly spaced)")
        return
    linthresh = _linthresh(x, xs)
    axis.set_xscale("symlog", linthresh=linthresh, linscale=0.5)
    top = max((v for v in xs if v and v > 0), default=linthresh)
    decades = [linthresh * 10.0**k for k in range(math.ceil(math.log10(top / linthresh)) + 1)]
    axis.xaxis.set_major_locator(FixedLocator([0.0, *decades]))
    axis.xaxis.set_minor_locator(FixedLocator([d * k for d in decades for k in range(2, 10)]))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick(x, v, {})))
    axis.set_xlabel(
        "training step (symlog: linear on [0, 1], log above)"
        if x == "step"
        else f"tokens seen (symlog: linear on [0, {_count(linthresh)}], log above)"
    )


def _style(models: list[dict]) -> dict[tuple, dict]:
    """Per ``_key``: colour by size (by model where sizes do not tell the models apart), line
    style by seed and variant."""
    groups = sorted({m["size"] or m["model"] for m in models}, key=size_key)
    by_size = len(groups) > 1 or len(models) == 1

    def colour_key(m: dict) -> str:
        return (m["size"] or m["model"]) if by_size else m["model"] + m["variant"]

    colours = list(dict.fromkeys(colour_key(m) for m in models))
    seeds = sorted({m["seed"] or 0 for m in models})
    variants = sorted({m["variant"] for m in models})
    style = {}
    for m in models:
        dash = seeds.index(m["seed"] or 0) + (variants.index(m["variant"]) if by_size else 0)
        style[_key(m)] = {
            "color": PALETTE[colours.index(colour_key(m)) % len(PALETTE)],
            "linestyle": LINESTYLES[dash % len(LINESTYLES)],
        }
    return style


def line_figure(series: pl.DataFrame, analysis: str, metric: str, x: str) -> Figure:
    part = series.filter((pl.col("analysis") == analysis) & (pl.col("metric") == metric))
    per_layer = part["layer"].is_not_null().any()
    models = _models(part)
    style, labels = _style(models), _labels(models)
    lines = []
    for m in models:
        line = _of(part, m)  # one row per checkpoint, in training order (line_series)
        layer = line["layer"][0]
        tied_head = line["tied_head"].max()
        label = labels[_key(m)] + _tied(analysis, tied_head)
        if layer is not None:
            label += f" (layer {layer})"
        lines.append(
            {
                "model": m["model"],
                "seed": m["seed"],
                "variant": m["variant"],
                "label": label,
                "layer": layer,
                "tied_head": tied_head,
                "x": line["x"].to_list(),
                "steps": line["step"].to_list(),
                "stages": [stage or None for stage in line["stage"]],
                "y": [_finite(v) for v in line["value"]],
                "style": style[_key(m)],
            }
        )
    named = NAMED.get((analysis, metric))
    name = named[0] if named else f"line__{analysis}__{metric}"
    title = named[1] if named else _metric_title(analysis, metric)
    ylabel = named[2] if named else metric
    title += ", last layer" if per_layer else ""

    def draw(fig) -> None:
        axis = fig.add_subplot()
        names = {}
        for line in lines:
            ys = [math.nan if v is None else v for v in line["y"]]
            axis.plot(line["x"], ys, marker=".", label=line["label"], **line["style"])
            names |= _names(line["x"], line["stages"], line["steps"])
        _x_axis(axis, x, [v for line in lines for v in line["x"]], names)
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.legend(title="model", loc="best")

    data = {"analysis": analysis, "metric": metric, "x": x, "lines": lines}
    section = "Training curves" if named else "Metrics over training"
    return Figure(name, title, section, data, draw)


def heatmap_figure(rows: pl.DataFrame, analysis: str, metric: str, x: str) -> Figure | None:
    panels = heatmap_panels(rows, analysis, metric)
    if not panels:
        return None
    values = [v for p in panels for row in p["values"] for v in row if v is not None]
    vmin, vmax = (min(values), max(values)) if values else (0.0, 1.0)
    title = f"{_metric_title(analysis, metric)} per layer over training"
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    xlabel = {
        "step": "checkpoint (training step)",
        "tokens": "tokens seen",
        "checkpoint": "checkpoint: stage, step",
    }[x]

    def draw(fig) -> None:
        import numpy as np

        axes = fig.subplots(nrows, ncols, squeeze=False)
        image = None
        for axis, panel in zip(axes.flat, panels, strict=False):
            grid = np.array(
                [[np.nan if v is None else v for v in row] for row in panel["values"]], dtype=float
            )
            image = axis.imshow(
                grid,
                origin="lower",
                aspect="auto",
                cmap="viridis",
                vmin=vmin,
                vmax=vmax,
                interpolation="nearest",
            )
            names = _names(panel["x"], panel["stages"], panel["steps"])
            labels = [_tick(x, v, names) for v in panel["x"]]
            every = max(1, math.ceil(len(labels) / 10))
            ticks = list(range(0, len(labels), every))
            axis.set_xticks(ticks, [labels[i] for i in ticks], rotation=45, ha="right")
            axis.set_yticks(range(len(panel["layers"])), [str(v) for v in panel["layers"]])
            axis.set_title(panel["label"])
            axis.set_xlabel(xlabel)
            axis.set_ylabel("layer (0 = embeddings)")
            axis.grid(False)
        for axis in list(axes.flat)[len(panels) :]:
            axis.set_visible(False)
        fig.suptitle(title)
        if image is not None:
            fig.colorbar(image, ax=axes.ravel().tolist(), label=metric, shrink=0.9)

    data = {"analysis": analysis, "metric": metric, "x": x, "panels": panels}
    size = (4.2 * ncols + 1.2, 3.4 * nrows + 0.6)
    return Figure(
        f"heatmap__{analysis}__{metric}", title, "Per layer over training", data, draw, size
    )


def icl_figures(table: pl.DataFrame, x: str) -> list[Figure]:
    figures = []
    if table.height == 0:
        return figures
    models = _models(table)
    labels = _labels(models)
    for m in models:
        part = _of(table, m)
        # A few checkpoints spread over training order: (stage rank, stage, step) tuples.
        steps = pick_steps(part.select(ORDER).rows())
        tasks = sorted(part["task"].unique().to_list())
        panels = []
        for task in tasks:
            rows = part.filter(pl.col("task") == task)
            lines = []
            for order, (_, stage, step) in enumerate(steps):
                line = rows.filter((pl.col("stage") == stage) & (pl.col("step") == step))
                line = line.sort("shots")
                if line.height:
                    lines.append(
                        {
                            "x": line["x"][0],
                            "step": step,
                            "stage": stage or None,
                            "order": order,  # among the drawn checkpoints: the colour
                            "shots": line["shots"].to_list(),
                            "accuracy": [_finite(v) for v in line["accuracy"]],
                            "seeds": line["seeds"].to_list(),
                        }
                    )
            picked = pl.DataFrame(steps, schema={c: part.schema[c] for c in ORDER}, orient="row")
            rows = rows.join(picked, on=ORDER)  # the bag-of-words and chance of those drawn
            bow = (
                rows.filter(pl.col("bow").is_not_null())
                .group_by("shots")
                .agg(pl.col("bow").mean())
                .sort("shots")
            )
            chance = rows["chance"].drop_nulls()
            panels.append(
                {
                    "task": task,
                    "chance": _finite(chance.mean()) if len(chance) else None,
                    "bow": {"shots": bow["shots"].to_list(), "accuracy": bow["bow"].to_list()},
                    "lines": lines,
                }
            )
        label = labels[_key(m)]
        title = f"ICL accuracy vs demonstrations: {label} (mean over task seeds)"
        ncols = len(panels) if len(panels) <= 3 else (2 if len(panels) == 4 else 3)
        nrows = math.ceil(len(panels) / ncols)

        def draw(fig, panels=panels, steps=steps, title=title, ncols=ncols, nrows=nrows) -> None:
            from matplotlib import colormaps
            from matplotlib.ticker import FixedLocator, FuncFormatter

            cmap = colormaps["viridis"]
            colour = [cmap(0.85 * i / max(1, len(steps) - 1)) for i in range(len(steps))]
            axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
            for i, (axis, panel) in enumerate(zip(axes.flat, panels, strict=False)):
                shots = sorted({k for line in panel["lines"] for k in line["shots"]})
                for line in panel["lines"]:
                    ys = [math.nan if v is None else v for v in line["accuracy"]]
                    axis.plot(line["shots"], ys, marker="o", markersize=3,
                              color=colour[line["order"]],
                              label=checkpoint_name(line["stage"], line["step"]))  # fmt: skip
                if panel["bow"]["shots"]:
                    axis.plot(panel["bow"]["shots"], panel["bow"]["accuracy"], color="#555555",
                              linestyle="--", marker="x", markersize=4,
                              label="bag-of-words baseline")  # fmt: skip
                if panel["chance"] is not None:
                    axis.axhline(panel["chance"], color="#999999", linestyle=":", label="chance")
                axis.set_xscale("symlog", linthresh=1, linscale=0.5)
                axis.xaxis.set_major_locator(FixedLocator(shots or [0]))
                axis.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axis.xaxis.set_minor_locator(FixedLocator([]))
                axis.set_title(panel["task"])
                axis.set_xlabel("demonstrations L")
                if i % ncols == 0:
                    axis.set_ylabel("accuracy (mean over task seeds)")
                axis.set_ylim(-0.02, 1.02)
            for axis in list(axes.flat)[len(panels) :]:
                axis.set_visible(False)
            handles, labels = axes.flat[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside right center")
            fig.suptitle(title)

        data = {"model": m["model"], "seed": m["seed"], "variant": m["variant"], "x": x,
                "panels": panels}  # fmt: skip
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")
        size = (3.6 * ncols + 1.8, 3.0 * nrows + 0.7)
        figures.append(Figure(f"icl__{slug}", title, "In-context learning", data, draw, size))
    return figures


def _model_order(rows: pl.DataFrame) -> list[str]:
    found = rows.select("model", "size", "seed").unique().to_dicts()
    found.sort(key=lambda m: (size_key(m["size"]), m["seed"] or 0, m["model"]))
    return list(dict.fromkeys(m["model"] for m in found))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _metric_label(metric: str, layer: str | None, input_set: str | None, sets: bool) -> str:
    analysis, name = metric.split("/", 1)
    label = _metric_title(analysis, name)
    if layer == "mean":
        label += ", mean over layers"
    elif layer is not None:
        label += f", layer {layer}"
    return label + (f" [{input_set}]" if sets and input_set else "")


def _task_label(task: str, capability: str, shots: int | None, several_shots: bool) -> str:
    label = f"{task} {capability.split('/', 1)[1]}"
    return label + (f", {shots}-shot" if several_shots and shots is not None else "")


def _diverging():
    from matplotlib.colors import LinearSegmentedColormap

    cmap = LinearSegmentedColormap.from_list("ckptlab_rho", DIVERGING)
    return cmap.with_extremes(bad="#DDDDDD")  # bad: no entry


def _order_norm(xs: list[float], x: str):
    """Colours for training order, on the report's x axis: symlog for steps and tokens (early
    checkpoints are told apart too), linear for the checkpoint index."""
    from matplotlib.colors import Normalize, SymLogNorm

    if x == "checkpoint":
        return Normalize(vmin=min(xs), vmax=max(max(xs), min(xs) + 1))
    linthresh = _linthresh(x, xs)
    return SymLogNorm(linthresh=linthresh, linscale=0.5, vmin=min(xs),
                      vmax=max(max(xs), linthresh))  # fmt: skip


def _order_colorbar(fig, image, axes, x: str, names: dict[float, str]) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter

    bar = fig.colorbar(image, ax=axes, label=X_LABELS[x], shrink=0.8)
    if x == "checkpoint":
        at = sorted(names)
        bar.ax.yaxis.set_major_locator(FixedLocator(at[:: max(1, math.ceil(len(at) / 12))]))
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick(x, v, names)))


def correlation_figures(table: pl.DataFrame, rows: pl.DataFrame, x: str = "step") -> list[Figure]:
    """Per model: a heatmap of rho (the TABLE_ROWS metrics with the largest max |rho| x every
    task accuracy; the HTML table is its data) and scatter plots of the SCATTER_PAIRS
    strongest pairs, at most one per (metric, task accuracy) whatever the layer, and none
    whose metric ranks the checkpoints as a drawn one does against the same accuracy. Points
    are coloured by training order on the report's axis ``x`` (the ``x`` column of ``rows``,
    else the step)."""
    figures: list[Figure] = []
    if table.height == 0:
        return figures
    metrics, capabilities = representation_series(rows), capability_series(rows)
    metric_keys = ["metric", "layer", "input_set"]
    task_keys = ["task", "capability_metric", "shots"]
    for model in [m for m in _model_order(rows) if m in set(table["model"])]:
        part = table.filter(pl.col("model") == model)
        sets = part["input_set"].drop_nulls().n_unique() > 1
        shots = part.group_by("task", "capability_metric").agg(pl.col("shots").n_unique())
        several = {(t, c) for t, c, n in shots.rows() if n > 1}
        order = (
            part.group_by(metric_keys)
            .agg(pl.col("rho").abs().max().alias("top"))
            .sort("top", *metric_keys, descending=[True, False, False, False], nulls_last=True)
        )
        shown = order.head(TABLE_ROWS).select(metric_keys).rows()
        tasks = part.group_by(task_keys).agg(pl.col("rho").abs().max().alias("top"))
        icl_last = pl.col("capability_metric").str.starts_with("icl/")
        # Benchmark accuracies (lm_eval) come first, a weak one too: "predicts nothing" is an
        # answer. Then ICL accuracies, each group by max |rho|, up to TABLE_COLUMNS.
        tasks = tasks.sort(
            icl_last, "top", *task_keys, descending=[False, True, False, False, False]
        )
        columns = tasks.head(TABLE_COLUMNS).sort(icl_last, *task_keys, nulls_last=True)
        columns = columns.select(task_keys).rows()
        cell = {
            (r["metric"], r["layer"], r["input_set"], r["task"], r["capability_metric"],
             r["shots"]): (r["rho"], r["n_steps"])
            for r in part.iter_rows(named=True)
        }  # fmt: skip
        label = model.rsplit("/", 1)[-1]
        heat = {
            "kind": "correlation_heatmap",
            "model": model,
            "metrics_total": order.height,
            "tasks_total": tasks.height,
            "entries": part.height,
            "rows": [_metric_label(*k, sets) for k in shown],
            "row_keys": [list(k) for k in shown],
            "columns": [_task_label(t, c, n, (t, c) in several) for t, c, n in columns],
            "column_keys": [list(k) for k in columns],
            "rho": [[cell.get((*k, *c), (None, None))[0] for c in columns] for k in shown],
            "n_steps": [[cell.get((*k, *c), (None, None))[1] for c in columns] for k in shown],
        }
        title = f"Spearman ρ across checkpoints: {label}"
        if order.height > len(shown) or tasks.height > len(columns):
            title += f" (top {len(shown)} of {order.height} metrics"
            title += f", {len(columns)} of {tasks.height} task accuracies, lm_eval first)"

        def draw_heat(fig, d=heat, title=title) -> None:
            import numpy as np

            grid = np.array(
                [[np.nan if v is None else v for v in row] for row in d["rho"]], dtype=float
            )
            axis = fig.add_subplot()
            image = axis.imshow(grid, cmap=_diverging(), vmin=-1, vmax=1, aspect="auto",
                                interpolation="nearest")  # fmt: skip
            axis.set_xticks(range(len(d["columns"])), d["columns"], rotation=40, ha="right")
            axis.set_yticks(range(len(d["rows"])), d["rows"])
            axis.grid(False)
            if grid.size <= 600:  # values legible at this size
                for (i, j), v in np.ndenumerate(grid):
                    if np.isfinite(v):
                        axis.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=7,
                                  color="white" if abs(v) > 0.7 else "black")  # fmt: skip
            axis.set_xlabel("task accuracy")
            axis.set_ylabel("representation metric")
            axis.set_title(title)
            fig.colorbar(image, ax=axis, label="Spearman ρ over checkpoints", shrink=0.8)

        # Room for the labels (about 0.07 in per character at 9 pt), then for the cells.
        width = 1.8 + 0.07 * max(map(len, heat["rows"])) + 0.55 * len(columns)
        height = 1.4 + 0.24 * len(shown) + 0.045 * max(map(len, heat["columns"]))
        name = f"correlation__{_slug(label)}"
        figures.append(Figure(name, title, CORRELATION_SECTION, heat, draw_heat, (width, height)))

        picked, seen, drawn = [], set(), set()
        for r in part.iter_rows(named=True):  # sorted by |rho|: strongest first
            family = (r["metric"], r["input_set"], r["task"], r["capability_metric"], r["shots"])
            if family in seen:
                continue
            xs = metrics.filter(
                (pl.col("model") == model)
                & pl.all_horizontal(pl.col(k).eq_missing(r[k]) for k in ["metric", "layer"])
                & (pl.col("input_set") == (r["input_set"] or ""))
            )
            ys = capabilities.filter(
                (pl.col("model") == model)
                & pl.all_horizontal(pl.col(k).eq_missing(r[k]) for k in task_keys)
            )
            points = _pairs(xs, ys, CHECKPOINT).sort("seed", *ORDER, nulls_last=True)
            # A metric that is a monotone map of one already drawn against this accuracy
            # (effective rank = exp(spectral entropy), ...) has the same ranks, the same or the
            # mirrored order: the same panel again.
            ranks = tuple(points["value"].rank("average").to_list())
            mirrored = tuple(len(ranks) + 1 - v for v in ranks)
            checkpoints = tuple(points.select(CHECKPOINT).rows())
            against = (r["task"], r["capability_metric"], r["shots"], checkpoints)
            if {(against, ranks), (against, mirrored)} & drawn:
                continue  # another layer of this metric may still be a panel of its own
            seen.add(family)
            drawn.add((against, ranks))
            task = (r["task"], r["capability_metric"])
            picked.append(
                {
                    **{k: r[k] for k in CORRELATION_COLUMNS if k != "model"},
                    "metric_label": _metric_label(r["metric"], r["layer"], r["input_set"], sets),
                    "task_label": _task_label(*task, r["shots"], task in several),
                    "steps": points["step"].to_list(),
                    "stages": [stage or None for stage in points["stage"]],
                    "seeds": points["seed"].to_list(),
                    "checkpoint_x": points["x"].to_list(),  # on the report's axis: the colour
                    "x": points["value"].to_list(),
                    "y": points["value_y"].to_list(),
                }
            )
            if len(picked) == SCATTER_PAIRS:
                break
        scatter_title = f"Strongest pairs across checkpoints: {label}"
        ncols = min(len(picked), 2)
        nrows = math.ceil(len(picked) / ncols)

        def draw_scatter(fig, panels=picked, title=scatter_title, ncols=ncols, nrows=nrows):
            import textwrap

            axes = fig.subplots(nrows, ncols, squeeze=False)
            norm = _order_norm([v for p in panels for v in p["checkpoint_x"]], x)
            names = {}
            image = None
            for axis, panel in zip(axes.flat, panels, strict=False):
                names |= _names(panel["checkpoint_x"], panel["stages"], panel["steps"])
                axis.plot(panel["x"], panel["y"], color="#999999", linewidth=0.8, zorder=1)
                image = axis.scatter(panel["x"], panel["y"], c=panel["checkpoint_x"],
                                     cmap="viridis", norm=norm, s=28, edgecolors="black",
                                     linewidths=0.3, zorder=2)  # fmt: skip
                axis.set_xlabel(textwrap.fill(panel["metric_label"], 45))
                axis.set_ylabel(textwrap.fill(panel["task_label"], 40))
                axis.set_title(f"ρ = {panel['rho']:+.2f} over {panel['n_steps']} checkpoints")
            for axis in list(axes.flat)[len(panels) :]:
                axis.set_visible(False)
            fig.suptitle(title + " (points joined in training order)")
            if image is not None:
                _order_colorbar(fig, image, axes.ravel().tolist(), x, names)

        scatter = {"kind": "correlation_scatter", "model": model, "x": x, "panels": picked}
        name, size = f"correlation_scatter__{_slug(label)}", (4.2 * ncols + 1.2, 3.6 * nrows + 0.6)
        figures.append(
            Figure(name, scatter_title, CORRELATION_SECTION, scatter, draw_scatter, size)
        )
    return figures


def linearity_cost_figures(
    frame: pl.DataFrame, models: list[str] | None = None, x: str = "step"
) -> list[Figure]:
    """Per (model, input set, dtype, seed): a block's linearity against what removing it
    costs (skipped; replaced by its fitted linear map), one point per (block, checkpoint),
    coloured by training order on the report's axis ``x``, each block's points joined in
    training order and labelled at the last checkpoint. ``frame``: ``linearity_cost``."""
    figures: list[Figure] = []
    if frame.height == 0:
        return figures
    sets = frame["input_set"].drop_nulls().n_unique() > 1
    dtypes = frame["dtype"].n_unique() > 1
    seeds = frame.group_by("model").agg(pl.col("seed").n_unique() > 1).filter(pl.col("seed"))
    seeded = set(seeds["model"])
    groups = frame.select("model", "input_set", "dtype", "seed").unique().rows()
    order = {m: i for i, m in enumerate(models or dict.fromkeys(frame["model"]))}

    def rank(group: tuple) -> tuple:
        model, input_set, dtype, seed = group
        return (order.get(model, 0), model, input_set or "", dtype or "", seed or 0)

    for model, input_set, dtype, seed in sorted(groups, key=rank):
        part = frame.filter(
            (pl.col("model") == model)
            & pl.col("input_set").eq_missing(input_set)
            & pl.col("dtype").eq_missing(dtype)
            & pl.col("seed").eq_missing(seed)
        )
        blocks = []
        for block in sorted(set(part["block"])):
            line = part.filter(pl.col("block") == block)  # in training order (linearity_cost)
            blocks.append(
                {"block": block, "stage": [stage or None for stage in line["stage"]],
                 **{k: line[k].to_list() for k in
                    ("step", "x", "linearity", "removal_cost", "linear_cost")}}
            )  # fmt: skip
        label = model.rsplit("/", 1)[-1] + (f" seed {seed}" if model in seeded else "")
        label += f" [{input_set}]" if sets and input_set else ""
        label += f" [{dtype}]" if dtypes else ""
        title = f"Block linearity vs removal cost over training: {label}"

        def draw(fig, blocks=blocks, title=title) -> None:
            axes = fig.subplots(1, 2, squeeze=False, sharex=True)[0]
            norm = _order_norm([v for b in blocks for v in b["x"]], x)
            names = {}
            for b in blocks:
                names |= _names(b["x"], b["stage"], b["step"])
            panels = (
                ("removal_cost", "block skipped (identity)"),
                ("linear_cost", "block replaced by its fitted linear map"),
            )
            image = None
            for axis, (cost, what) in zip(axes, panels, strict=True):
                for b in blocks:
                    ys = [math.nan if v is None else v for v in b[cost]]
                    axis.plot(b["linearity"], ys, color="#999999", linewidth=0.8, zorder=1)
                    image = axis.scatter(b["linearity"], ys, c=b["x"], cmap="viridis",
                                         norm=norm, s=24, edgecolors="black", linewidths=0.3,
                                         zorder=2)  # fmt: skip
                    last = (b["linearity"][-1], ys[-1])  # label the block at its last checkpoint
                    axis.annotate(f"block {b['block']}", last, xytext=(4, 2),
                                  textcoords="offset points", fontsize=7)  # fmt: skip
                axis.axhline(0, color="black", linewidth=0.6)
                axis.set_xlabel("linearity of the block (hidden_states[k-1] → [k])")
                axis.set_ylabel("Δ cross-entropy (nats/token)")
                axis.set_title(what)
            fig.suptitle(title)
            if image is not None:
                _order_colorbar(fig, image, list(axes), x, names)

        data = {"model": model, "seed": seed, "input_set": input_set, "dtype": dtype, "x": x,
                "blocks": blocks}  # fmt: skip
        name = f"linearity_cost__{_slug(label)}"
        figures.append(Figure(name, title, "Linearity vs removal cost", data, draw, (10.0, 4.2)))
    return figures


# --------------------------------------------------------------------------- output


def _failures(store: ResultStore, selection: Selection) -> pl.DataFrame:
    sql = (
        "SELECT f.model, f.revision, f.step, f.analysis, f.error, f.run_id,"
        " f.cell_key IN (SELECT cell_key FROM cells) AS computed_since"
        " FROM failures f JOIN runs r USING (run_id) WHERE r.spec_name = ?"
    )
    params: list = [selection.spec_name]
    if selection.run_id is not None:
        sql += " AND f.run_id = ?"
        params.append(selection.run_id)
    return store.query(sql + " ORDER BY f.model, f.step, f.analysis", params)


def _figure_html(figure: Figure, images: dict[str, str]) -> str:
    e = html.escape
    return (
        f'<figure id="{e(figure.name)}"><img alt="{e(figure.title)}" '
        f'src="data:image/png;base64,{images[figure.name]}">'
        f"<figcaption>{e(figure.title)} (<code>{e(figure.name)}.png</code>, "
        f"<code>.svg</code>)</figcaption></figure>"
    )


def _rho_colour(rho: float) -> str:
    """A light shade of the heatmap's colour for ``rho``: the text stays readable."""
    end = DIVERGING[2] if rho > 0 else DIVERGING[0]
    weight = 0.6 * min(abs(rho), 1.0)
    channels = (int(end[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(255 - weight * (255 - c)):02X}" for c in channels)


def _correlation_html(report: Report, images: dict[str, str]) -> list[str]:
    """The correlation section: what the numbers are, then per model the table (the
    heatmap's data), the heatmap and the scatter plots."""
    if report.correlations is None:
        return []
    e = html.escape
    parts = [
        f'<h2 id="correlations">{e(CORRELATION_SECTION)}</h2>',
        "<p>Spearman ρ across checkpoints, per model: each representation metric (a row: per"
        " layer, and its mean over layers) against each task accuracy (a column: lm_eval acc"
        " and acc_norm, ICL accuracy averaged over task seeds), over the checkpoints where both"
        f" have a finite value (at least {MIN_STEPS}; a constant series has no ρ). Shown per"
        f" model: the {TABLE_ROWS} metrics with the largest max |ρ|, rows sorted by it, and up"
        f" to {TABLE_COLUMNS} task accuracies: lm_eval first, then ICL, each by max |ρ|; all"
        f" {report.correlations.height} entries are in <code>correlations.csv</code> next to"
        " this page. A metric that only trends with training correlates with every accuracy"
        " that also trends: a large |ρ| says the two move together over these checkpoints,"
        " not that one causes the other.</p>",
    ]
    if report.correlations.height == 0:
        return [*parts, "<p>No entries.</p>"]
    figures = [f for f in report.figures if f.section == CORRELATION_SECTION]
    for heat in [f for f in figures if f.data.get("kind") == "correlation_heatmap"]:
        d = heat.data
        parts.append(f"<h3>{e(d['model'])}</h3>")
        rows, columns = len(d["rows"]), len(d["columns"])
        parts.append(
            f"<p>{rows} of {d['metrics_total']} metrics, {columns} of {d['tasks_total']} task"
            f" accuracies (those with the largest |ρ|), of {d['entries']} entries.</p>"
        )
        parts.append('<table class="correlations"><tr><th>representation metric</th>')
        parts += [f"<th>{e(c)}</th>" for c in d["columns"]]
        parts.append("</tr>")
        for label, rhos, counts in zip(d["rows"], d["rho"], d["n_steps"], strict=True):
            cells = [f"<td>{e(label)}</td>"]
            for rho, n in zip(rhos, counts, strict=True):
                if rho is None:
                    cells.append("<td></td>")
                else:
                    cells.append(
                        f'<td style="background:{_rho_colour(rho)};text-align:right"'
                        f' title="{n} checkpoints">{rho:+.2f}</td>'
                    )
            parts.append(f"<tr>{''.join(cells)}</tr>")
        parts.append("</table>")
        for figure in figures:
            if figure.data.get("model") == d["model"] and figure.name in images:
                parts.append(_figure_html(figure, images))
    return parts


def _html(report: Report, images: dict[str, str], db: Path, seconds: float) -> str:
    e = html.escape
    sel = report.selection
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ckptlab report: {e(sel.spec_name)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:1em auto;"
        "padding:0 1em;color:#222}figure{margin:1em 0}img{max-width:100%;height:auto}"
        "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;"
        "padding:2px 6px;text-align:left;vertical-align:top}code{background:#f4f4f4}</style>",
        "</head><body>",
        f"<h1>ckptlab report: {e(sel.spec_name)}</h1>",
        f"<p>{e(sel.describe())}. Database <code>{e(str(db))}</code>, {report.rows} rows, "
        f"x = {e(report.x)}. {len(report.figures)} figures, rendered in {seconds:.1f} s.</p>",
    ]
    section = None
    for figure in report.figures:
        if figure.name not in images or figure.section == CORRELATION_SECTION:
            continue
        if figure.section != section:
            section = figure.section
            parts.append(f"<h2>{e(section)}</h2>")
        parts.append(_figure_html(figure, images))
    parts += _correlation_html(report, images)
    parts.append('<h2 id="failures">Failures</h2>')
    failures = report.failures
    if failures is None:
        parts.append("<p>The failures table could not be read.</p>")
    elif failures.height == 0:
        parts.append('<table class="failures"><tr><td>no failures</td></tr></table>')
    else:
        columns = ["model", "revision", "step", "analysis", "error", "run_id", "computed_since"]
        parts.append('<table class="failures"><tr>')
        parts += [f"<th>{e(c.replace('_', ' '))}</th>" for c in columns]
        parts.append("</tr>")
        for row in failures.iter_rows(named=True):
            cells = "".join(f"<td>{e('' if row[c] is None else str(row[c]))}</td>" for c in columns)
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</table>")
        parts.append("<p>computed since: a later run stored the cell.</p>")
    if report.notes:
        parts.append('<h2 id="notes">Notes</h2><ul>')
        parts += [f"<li>{e(note)}</li>" for note in report.notes]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def build_report(store: ResultStore, selection: Selection, x: str = "step") -> Report:
    """The figures to draw (their data included) and the notes, without drawing."""
    report = Report(selection)
    try:
        rows = select_rows(store, selection)
    except Exception as err:  # a database without the results view, say
        report.notes.append(f"results could not be read: {_one_line(err)}")
        rows = pl.DataFrame()
    try:
        report.failures = _failures(store, selection)
    except Exception as err:
        report.notes.append(f"failures could not be read: {_one_line(err)}")
    report.rows = rows.height
    if rows.height == 0:
        report.notes.append("no rows selected: nothing to draw")
        return report
    try:
        rows, report.x = with_x(rows, x, report.notes)
    except Exception as err:
        report.notes.append(f"x = {x}: not available ({_one_line(err)}), x = step")
        rows = rows.with_columns(pl.col("step").cast(pl.Float64).alias("x"))

    def attempt(what: str, make: Callable) -> None:
        try:
            made = make()
        except Exception as err:
            report.notes.append(f"{what}: not drawn ({_one_line(err)})")
            return
        if isinstance(made, Figure):
            report.figures.append(made)
        elif made:
            report.figures.extend(made)

    try:
        series = line_series(rows)
        pairs = series.select("analysis", "metric").unique().sort("analysis", "metric").rows()
    except Exception as err:
        report.notes.append(f"metric curves: not drawn ({_one_line(err)})")
        series, pairs = None, []
    named = [p for p in NAMED if p in pairs]
    for analysis, metric in named + [p for p in pairs if p not in NAMED]:
        attempt(
            f"{analysis}: {metric}",
            lambda a=analysis, m=metric: line_figure(series, a, m, report.x),
        )
    try:
        layered = heatmap_metrics(rows)
    except Exception as err:
        report.notes.append(f"heatmaps: not drawn ({_one_line(err)})")
        layered = []
    for analysis, metric in layered:
        attempt(
            f"{analysis}: {metric} heatmap",
            lambda a=analysis, m=metric: heatmap_figure(rows, a, m, report.x),
        )
    attempt("ICL", lambda: icl_figures(icl_table(rows), report.x))
    attempt(
        "linearity vs removal cost",
        lambda: linearity_cost_figures(linearity_cost(rows), _model_order(rows), report.x),
    )
    try:
        if capability_series(rows).height:
            report.correlations = correlation_table(rows)
            if report.correlations.height == 0:
                report.notes.append(
                    f"correlations: no metric and task accuracy share {MIN_STEPS} checkpoints"
                    " with varying values"
                )
    except Exception as err:
        report.notes.append(f"correlations: not computed ({_one_line(err)})")
    if report.correlations is not None:
        attempt("correlations", lambda: correlation_figures(report.correlations, rows, report.x))
    skipped = sorted(set(rows.filter(pl.col("metric").is_in(list(BOOKKEEPING)))["metric"]))
    if skipped:
        report.notes.append("bookkeeping counts not drawn: " + ", ".join(skipped))
    beyond = (
        rows.filter(pl.col("metric") == "exceeds_context")
        .select("model", "task", "shots")
        .unique()
        .sort("model", "task", "shots")
    )
    if beyond.height:
        report.notes.append(
            "ICL prompts longer than the model's context, not scored: "
            + "; ".join(f"{m} {t} L = {k}" for m, t, k in beyond.rows())
        )
    variants = rows.filter(pl.col("variant") != "").select("analysis", "variant").unique()
    if variants.height:
        report.notes.append(
            "analyses with several input sets or parameter sets, one line (panel) each: "
            + ", ".join(sorted(set(variants["analysis"])))
        )
    return report


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def render_report(
    db: Path,
    out: Path,
    spec_name: str | None = None,
    run_id: str | None = None,
    x: str = "step",
) -> list[Path]:
    """Write ``<name>.png`` and ``<name>.svg`` per figure, ``figures.json`` (each figure's
    plotted numbers) and ``index.html`` (self-contained) into ``out``; return the files
    written (PNGs, SVGs, correlations.csv where there are task accuracies, figures.json,
    index.html). ``x="tokens"`` plots against the
    checkpoints' ``tokens_seen`` where every checkpoint has it (else the step, with a note);
    where steps restart in a later stage, x is never the step (``with_x``).
    Files an earlier report wrote into ``out`` and this one did not are removed."""
    import io

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    started = time.perf_counter()
    store = ResultStore(Path(db))
    selection = resolve_selection(store, spec_name, run_id)
    report = build_report(store, selection, x)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    images: dict[str, str] = {}
    drawn: list[dict] = []
    with matplotlib.rc_context(RC):
        for figure in report.figures:
            png, svg = out / f"{figure.name}.png", out / f"{figure.name}.svg"
            try:
                fig = MplFigure(figsize=figure.size, layout="constrained")
                FigureCanvasAgg(fig)
                figure.draw(fig)
                buffer = io.BytesIO()
                fig.savefig(buffer, format="png", metadata={"Software": None})
                png.write_bytes(buffer.getvalue())
                fig.set_layout_engine("none")  # laid out by the PNG's draw: keep it
                fig.savefig(svg, format="svg", metadata={"Date": None})
            except Exception as err:
                report.notes.append(f"{figure.title}: not drawn ({_one_line(err)})")
                for path in (png, svg):
                    path.unlink(missing_ok=True)
                continue
            images[figure.name] = base64.b64encode(buffer.getvalue()).decode("ascii")
            written += [png, svg]
            drawn.append(
                {"name": figure.name, "title": figure.title, "figsize": figure.size, **figure.data}
            )
    if report.correlations is not None:  # the whole table; the page shows the top rows
        csv = out / "correlations.csv"
        report.correlations.write_csv(csv)
        written.append(csv)
    manifest = out / "figures.json"
    _remove_stale(manifest, {p.name for p in written})
    document = {
        "spec_name": selection.spec_name,
        "run_id": selection.run_id,
        "until": selection.until.isoformat() if selection.until else None,
        "x": report.x,
        "figures": drawn,
        "files": sorted(p.name for p in written),
    }
    manifest.write_text(json.dumps(_plain(document), indent=1, default=str))
    page = out / "index.html"
    page.write_text(_html(report, images, Path(db), time.perf_counter() - started))
    return [*written, manifest, page]


def _plain(value):
    """``value`` with every non-finite float replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _remove_stale(manifest: Path, keep: set[str]) -> None:
    """Delete figure files an earlier report in this folder listed and this one did not."""
    try:
        earlier = json.loads(manifest.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return
    for name in earlier:
        if (
            isinstance(name, str)
            and name not in keep
            and "/" not in name
            and name.endswith((".png", ".svg", ".csv"))
        ):
            (manifest.parent / name).unlink(missing_ok=True)
