"""The frames the figures draw, made from selected rows (``select_rows``'s columns, with
``x`` from ``with_x``): curves over training, layer x checkpoint grids, ICL accuracy per shot
count, a block's linearity next to its removal cost; and who is who: the models (one per
(model, seed, variant)), their order and labels.

Several parameter sets, input sets or dtypes of one analysis are separate series (the
``variant``): a float32 and a bfloat16 cell of one checkpoint are two measurements, never
averaged. Repeats at one checkpoint (several revisions) are averaged.

Owns: grouping, averaging and ordering rows into series, and the models' labels. Must not:
query the database, compute correlations (``correlation``), or import matplotlib.
"""

from __future__ import annotations

import math
import re

import polars as pl

from ckptlab.report.order import CHECKPOINT, ORDER, with_order

# Counts a run records for bookkeeping: constant over training, not worth a figure.
BOOKKEEPING = frozenset(
    {"num_predicted_tokens", "lm_head_rows", "twonn_points", "neurons", "num_clusters"}
)
# Analyses of the LM head: where it is the input embedding matrix, the figures say so.
HEAD_ANALYSES = frozenset({"singular_entropy"})
TIED = " (tied to the input embeddings)"
ICL_STEPS = 5  # checkpoints drawn per ICL figure, spread over the checkpoints' order
_SIZE_WORDS = ("xxs", "xs", "s", "m", "l", "xl", "xxl")
_SIZE_UNITS = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


# ------------------------------------------------------------------------------ models


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


def models_of(rows: pl.DataFrame) -> list[dict]:
    """One dict per (model, seed, variant) in a stable order: size, seed, model name, variant.
    A model with several seeds is one repo holding several runs (OLMo 2's stage-2
    ingredients): a line (panel) each."""
    found = rows.select("model", "size", "seed", "variant").unique().to_dicts()
    return sorted(
        found,
        key=lambda m: (size_key(m["size"]), m["seed"] or 0, m["model"], m["variant"]),
    )


def model_key(m: dict) -> tuple:
    """A ``models_of`` entry as a dict key: (model, seed, variant)."""
    return (m["model"], m["seed"], m["variant"])


def rows_of(frame: pl.DataFrame, m: dict) -> pl.DataFrame:
    """The rows of one (model, seed, variant) of ``models_of``."""
    return frame.filter(
        (pl.col("model") == m["model"])
        & pl.col("seed").eq_missing(m["seed"])
        & (pl.col("variant") == m["variant"])
    )


def labels_of(models: list[dict]) -> dict[tuple, str]:
    """Per ``model_key``: the model's short name, its seed where the model has several, the
    variant in brackets."""
    seeds: dict[str, set] = {}
    for m in models:
        seeds.setdefault(m["model"], set()).add(m["seed"])
    labels = {}
    for m in models:
        label = m["model"].rsplit("/", 1)[-1]
        if len(seeds[m["model"]]) > 1:
            label += f" seed {m['seed']}"
        labels[model_key(m)] = f"{label} [{m['variant']}]" if m["variant"] else label
    return labels


def tied_suffix(analysis: str, tied_head) -> str:
    """What a figure of the LM head (singular_entropy) says of a head that is the input
    embedding matrix: its spectrum is the embeddings', not a head's of its own."""
    return TIED if analysis in HEAD_ANALYSES and tied_head else ""


def model_order(rows: pl.DataFrame) -> list[str]:
    """The models (names only) in size, then seed, then name order."""
    found = rows.select("model", "size", "seed").unique().to_dicts()
    found.sort(key=lambda m: (size_key(m["size"]), m["seed"] or 0, m["model"]))
    return list(dict.fromkeys(m["model"] for m in found))


def finite(value) -> float | None:
    """``value`` as a float, None where it is missing or not finite (strict JSON)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------- curves and grids


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
    models = models_of(chosen)
    labels = labels_of(models)
    panels = []
    for m in models:
        part = rows_of(chosen, m).filter(pl.col("layer").is_not_null())
        if part.height == 0:
            continue
        # cells: one row per (layer, checkpoint); columns: the checkpoints in training order.
        cells = part.group_by("layer", *ORDER).agg(pl.col("x").first(), pl.col("value").mean())
        columns = cells.select(*ORDER, "x").unique(ORDER).sort(ORDER)
        checkpoints = columns.select("stage", "step").rows()
        layers = sorted(cells["layer"].unique().to_list())
        lookup = {
            (r["layer"], r["stage"], r["step"]): r["value"] for r in cells.iter_rows(named=True)
        }
        values = [[finite(lookup.get((layer, *c))) for c in checkpoints] for layer in layers]
        panels.append(
            {
                "model": m["model"],
                "seed": m["seed"],
                "variant": m["variant"],
                "label": labels[model_key(m)] + tied_suffix(analysis, part["tied_head"].max()),
                "x": columns["x"].to_list(),
                "steps": columns["step"].to_list(),
                "stages": [stage or None for stage in columns["stage"]],
                "layers": layers,
                "values": values,
            }
        )
    return panels


# ------------------------------------------------------------------------------- ICL


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


# ------------------------------------------------------- finite rows, linearity vs cost


def finite_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """Non-item rows with a finite value, in training order (``with_order``); input_set ""
    where none (a key polars joins on); ``x`` the step where the rows have no x yet;
    ``dtype_tag`` ' [bfloat16]' where the analysis has rows in several dtypes (two
    measurements of a checkpoint, not repeats to average), else ''. Takes results-view rows
    as stored (``SELECT * FROM results``) as well as ``select_rows``'s."""
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


LINEARITY_COST_COLUMNS = ["model", "input_set", "dtype", *CHECKPOINT, "x", "block", "linearity",
                          "removal_cost", "linear_cost"]  # fmt: skip


def linearity_cost(rows: pl.DataFrame) -> pl.DataFrame:
    """Per (model, input_set, dtype, checkpoint, block): block k's linearity (``linearity`` at
    layer k - 1, the pair hidden_states[k-1] -> hidden_states[k]) next to what removing it
    costs: removal_cost = cross_entropy_skip(k) - cross_entropy, linear_cost =
    cross_entropy_linear(k) - cross_entropy (block_ablation; layer k = block k, the intact CE
    at no layer). Only (block, checkpoint)s both analyses measured on the same input set in
    the same dtype; repeats averaged. A checkpoint is its (seed, stage, step), ``x`` its place
    on the report's axis; rows in training order. Columns: LINEARITY_COST_COLUMNS."""
    base = finite_rows(rows).filter(pl.col("task").is_null())
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
    # A left join: a block_ablation without the linear replacement still has its removal cost.
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
