"""What one report holds (``Report``): the selection's figures with their data, the
correlation table, the failures and the notes, put together without drawing
(``build_report``).

It never raises because data is partial or odd: each step that fails (a figure, the heatmaps,
the correlations, reading the failures) becomes a note and the rest goes on.

Owns: the order of the figures and the notes about what was left out. Must not: draw, write
files or render HTML (``render``, ``figures.save_figures``, ``page``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from ckptlab.errors import one_line
from ckptlab.report.correlation import MIN_STEPS, capability_series, correlation_table
from ckptlab.report.data import (
    BOOKKEEPING,
    heatmap_metrics,
    icl_table,
    line_series,
    linearity_cost,
    model_order,
)
from ckptlab.report.figures import (
    NAMED,
    Figure,
    correlation_figures,
    heatmap_figure,
    icl_figures,
    line_figure,
    linearity_cost_figures,
)
from ckptlab.report.order import with_x
from ckptlab.report.selection import Selection, select_failures, select_rows
from ckptlab.results import ResultStore


@dataclass
class Report:
    selection: Selection
    rows: int = 0
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: pl.DataFrame | None = None
    x: str = "step"  # step, tokens, or checkpoint (the index in training order)
    correlations: pl.DataFrame | None = None  # correlation_table; None: no task accuracies


def build_report(store: ResultStore, selection: Selection, x: str = "step") -> Report:
    """The figures to draw (their data included) and the notes, without drawing."""
    report = Report(selection)
    try:
        rows = select_rows(store, selection)
    except Exception as err:  # a database without the results view, say
        report.notes.append(f"results could not be read: {one_line(err, first=True)}")
        rows = pl.DataFrame()
    try:
        report.failures = select_failures(store, selection)
    except Exception as err:
        report.notes.append(f"failures could not be read: {one_line(err, first=True)}")
    report.rows = rows.height
    if rows.height == 0:
        report.notes.append("no rows selected: nothing to draw")
        return report
    try:
        rows, report.x = with_x(rows, x, report.notes)
    except Exception as err:
        report.notes.append(f"x = {x}: not available ({one_line(err, first=True)}), x = step")
        rows = rows.with_columns(pl.col("step").cast(pl.Float64).alias("x"))

    def attempt(what: str, make: Callable) -> None:
        """Add what ``make`` returns (a Figure, a list of them, or None); a note if it raises."""
        try:
            made = make()
        except Exception as err:
            report.notes.append(f"{what}: not drawn ({one_line(err, first=True)})")
            return
        if isinstance(made, Figure):
            report.figures.append(made)
        elif made:
            report.figures.extend(made)

    # Curves: the NAMED ones (saturation, the LM head's singular entropy) first.
    try:
        series = line_series(rows)
        pairs = series.select("analysis", "metric").unique().sort("analysis", "metric").rows()
    except Exception as err:
        report.notes.append(f"metric curves: not drawn ({one_line(err, first=True)})")
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
        report.notes.append(f"heatmaps: not drawn ({one_line(err, first=True)})")
        layered = []
    for analysis, metric in layered:
        attempt(
            f"{analysis}: {metric} heatmap",
            lambda a=analysis, m=metric: heatmap_figure(rows, a, m, report.x),
        )
    attempt("ICL", lambda: icl_figures(icl_table(rows), report.x))
    attempt(
        "linearity vs removal cost",
        lambda: linearity_cost_figures(linearity_cost(rows), model_order(rows), report.x),
    )
    # Correlations only where there is a task accuracy to correlate with.
    try:
        if capability_series(rows).height:
            report.correlations = correlation_table(rows)
            if report.correlations.height == 0:
                report.notes.append(
                    f"correlations: no metric and task accuracy share {MIN_STEPS} checkpoints"
                    " with varying values"
                )
    except Exception as err:
        report.notes.append(f"correlations: not computed ({one_line(err, first=True)})")
    if report.correlations is not None:
        attempt("correlations", lambda: correlation_figures(report.correlations, rows, report.x))

    # Notes on what the figures leave out, or split into several lines.
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
