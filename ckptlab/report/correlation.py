"""What predicts what: per model, Spearman rho across checkpoints between every
representation metric (per layer, and its mean over layers) and every task accuracy (lm_eval
acc / acc_norm, ICL accuracy averaged over task seeds), as one table (``correlation_table``).

``spearman`` is the one Spearman rho of the package: ranks averaged over ties (as
``scipy.stats.spearmanr``), then Pearson, within groups of a frame. ``SPEARMAN_SQL`` is not a
second one the report runs: it is the documented query, the same table in DuckDB SQL for
``ckptlab query`` over a whole database, quoted in the docs (docs/report.md); the tests hold
it equal to ``correlation_table`` (to 1e-9) and to the docs' copy.

Owns: the metric and accuracy series that are correlated, their pairing at common
checkpoints, and rho. Must not: query the database, choose what a figure or the page shows
(``figures``, ``page``), or import matplotlib or scipy.
"""

from __future__ import annotations

import polars as pl

from ckptlab.report.data import BOOKKEEPING, finite_rows
from ckptlab.report.order import CHECKPOINT, ORDER

# Task accuracies ("capabilities") a representation metric is correlated with, per analysis.
CAPABILITIES = {"lm_eval": ("acc", "acc_norm"), "icl": ("accuracy",)}
MIN_STEPS = 3  # common checkpoints a Spearman rho needs
CORRELATION_COLUMNS = ["model", "metric", "layer", "input_set", "task", "capability_metric",
                       "shots", "rho", "n_steps"]  # fmt: skip

# The correlation table in one DuckDB query over the whole database (``ckptlab query``): every
# representation metric per layer and its mean over layers, against every task accuracy, with
# each analysis at its latest version. A checkpoint is its (seed, stage, step), as in the
# report (steps restart in a later stage of some suites). Where an analysis has several
# parameter sets it mixes them (the report keeps them apart), and it reads every spec's rows,
# not one spec's. docs/report.md quotes it verbatim (tests/test_report_stages.py checks).
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


# ------------------------------------------------------------------------------ rho


def average_ranks(values):
    """1-based ranks of a polars Series or expression, tied values getting the mean of the
    ranks they span (``scipy.stats.rankdata``'s default): the ranks Spearman rho correlates."""
    return values.rank("average")


def spearman(
    pairs: pl.DataFrame, keys: list[str], x: str = "value", y: str = "value_y"
) -> pl.DataFrame:
    """Spearman rho of columns ``x`` and ``y`` within each group of ``keys`` (a null key is a
    group of its own): Pearson's r of their ``average_ranks``. ``pairs``: one row per
    observation, finite values only (a NaN would rank as the largest value). A group with
    fewer than MIN_STEPS rows, or a constant ``x`` or ``y`` (rho NaN), has no row. Columns:
    keys, rho (Float64), n_steps (Int64: the group's rows); in no particular order."""
    return (
        pairs.with_columns(
            average_ranks(pl.col(x)).over(keys).alias("rank_x"),
            average_ranks(pl.col(y)).over(keys).alias("rank_y"),
        )
        .group_by(keys)
        .agg(pl.corr("rank_x", "rank_y").alias("rho"), pl.len().cast(pl.Int64).alias("n_steps"))
        .filter((pl.col("n_steps") >= MIN_STEPS) & pl.col("rho").is_finite())  # constant: NaN
    )


# --------------------------------------------------------------------------- series


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
    axis. Repeats (several revisions at one checkpoint) are averaged. Columns: model, metric,
    layer, input_set, seed, stage, step, stage_rank, x, value."""
    rep = finite_rows(rows).filter(
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
    ...; a checkpoint and ``x`` as in ``representation_series``. Columns: model, task,
    capability_metric, shots, seed, stage, step, stage_rank, x, value."""
    wanted = pl.lit(False)
    for analysis, metrics in CAPABILITIES.items():
        wanted = wanted | ((pl.col("analysis") == analysis) & pl.col("metric").is_in(metrics))
    cap = finite_rows(rows).filter(wanted & pl.col("task").is_not_null())
    cap = _with_params(cap.rename({"metric": "capability_metric"}), "capability_metric")
    keys = ["model", "task", "capability_metric", "shots"]
    return (
        cap.group_by(*keys, *CHECKPOINT, "stage_rank")
        .agg(pl.col("x").first(), pl.col("value").mean())
        .sort(*keys, "seed", *ORDER, nulls_last=True)
    )


def pairs_at(metrics: pl.DataFrame, capabilities: pl.DataFrame, on: list[str]) -> pl.DataFrame:
    """Metric values (``value``) next to accuracies (``value_y``) at the checkpoints both
    have; a seed of None matches None."""
    return metrics.join(capabilities.drop("x", "stage_rank"), on=on, suffix="_y", nulls_equal=True)


# ---------------------------------------------------------------------------- table


def correlation_table(rows: pl.DataFrame) -> pl.DataFrame:
    """Spearman rho across checkpoints, per model, between every representation metric
    (``representation_series``) and every task accuracy (``capability_series``), over the
    checkpoints where both have a finite value (``spearman``). A checkpoint is its (seed,
    stage, step): stage-1 step N and stage-2 step N are two. A pair with fewer than MIN_STEPS
    common checkpoints, or a constant series, has no entry. ``rows``: results-view rows of one
    analysis version each (as ``select_rows``); item rows are ignored. Columns:
    CORRELATION_COLUMNS (``n_steps``: the checkpoints), by model, then |rho| descending."""
    keys = ["model", "metric", "layer", "input_set", "task", "capability_metric", "shots"]
    pairs = pairs_at(representation_series(rows), capability_series(rows), ["model", *CHECKPOINT])
    return (
        spearman(pairs, keys)
        .with_columns(
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
