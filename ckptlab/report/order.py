"""What a checkpoint is in the report, and where it sits: its training order and its place on
the x axis.

A checkpoint is its (seed, stage, step) (``CHECKPOINT``). Some suites restart the step count in
a later stage (OLMo 2's stage 2, CrystalCoder's phases), so the step alone would merge stage-1
step N with stage-2 step N; the seed tells apart runs inside one repo (OLMo 2's stage-2
ingredients). Training order within one seed is stage (``catalog.stage_rank``), then step
(``ORDER``).

Owns: the ``stage``/``stage_rank`` columns, the ``x`` column and what it is (step, tokens or
checkpoint index), a checkpoint's printed name. Must not: query the database, aggregate
values or draw.
"""

from __future__ import annotations

import polars as pl

from ckptlab.catalog import stage_rank

# A checkpoint within one model: steps restart in a later stage of some suites (OLMo 2's stage
# 2, CrystalCoder's phases) and a seed is a run of its own (OLMo 2's stage-2 ingredients).
CHECKPOINT = ["seed", "stage", "step"]
ORDER = ["stage_rank", "stage", "step"]  # training order within one seed


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
    # Every (stage, step) of the selection, numbered 0, 1, ... in training order.
    order = rows.select(*ORDER).unique().sort(ORDER).with_row_index("x")
    notes.append(
        f"{why}, and tokens_seen is not known for every checkpoint: x = the checkpoint's"
        " index in training order (stage, then step; the ticks name them)"
    )
    return rows.join(order.with_columns(pl.col("x").cast(pl.Float64)), on=ORDER), "checkpoint"
