"""Figures of a spec's (or one run's) results: a PNG and an SVG per figure, the plotted numbers
in ``figures.json``, the correlation table in ``correlations.csv`` and one self-contained
``index.html`` (PNGs embedded as base64, no external resource).

The modules, in the order the data goes through them:

- ``selection``: which rows (a spec's cells, or a run's at its end) and failures; the SQL;
- ``order``: a checkpoint is its (seed, stage, step), in training order; the x axis;
- ``data``: the frames figures draw (curves, layer grids, ICL, linearity vs removal cost);
- ``correlation``: what predicts what, per model: Spearman rho across checkpoints between
  every representation metric and every task accuracy (``correlation_table``, the one
  ``spearman``), and ``SPEARMAN_SQL``, the same table as one DuckDB query (docs/report.md's);
- ``figures``: each figure's data and its matplotlib drawing, saved as PNG and SVG;
- ``build``: the report's figures and notes, put together without drawing;
- ``page``: ``index.html`` from ``templates/report.html.j2`` (Jinja2, autoescaped);
- ``render``: ``render_report``, which writes all of it into one folder.

Duplicate checkpoints (``duplicate_of``) are drawn and correlated as the checkpoints they are.

``render_report`` never raises because data is partial or odd: a figure it cannot draw is
skipped with a note in the HTML. It raises ``ReportError`` only when there is nothing to select
from (no database, no such run, neither a spec name nor a run).

Importing this package imports polars, not matplotlib or Jinja2 (``ckptlab report --help``
stays quick). The names below are re-exported for reading and calling; a test that changes a
constant or replaces a function sets it on the module that owns and uses it (e.g.
``ckptlab.report.figures.TABLE_COLUMNS``), not here.

Owns: the package's public names (re-exports only). Must not: import matplotlib or Jinja2 at
import time, write to the results database (a report only reads it), or import
``orchestrator/``.
"""

from ckptlab.report.build import Report, build_report
from ckptlab.report.correlation import (
    CAPABILITIES,
    CORRELATION_COLUMNS,
    MIN_STEPS,
    SPEARMAN_SQL,
    average_ranks,
    capability_series,
    correlation_table,
    representation_series,
    spearman,
)
from ckptlab.report.data import (
    BOOKKEEPING,
    HEAD_ANALYSES,
    ICL_STEPS,
    LINEARITY_COST_COLUMNS,
    TIED,
    heatmap_metrics,
    heatmap_panels,
    icl_table,
    line_series,
    linearity_cost,
    pick_steps,
    size_key,
)
from ckptlab.report.figures import (
    CORRELATION_SECTION,
    DIVERGING,
    DPI,
    LINESTYLES,
    NAMED,
    PALETTE,
    RC,
    SCATTER_PAIRS,
    TABLE_COLUMNS,
    TABLE_ROWS,
    X_LABELS,
    Figure,
    correlation_figures,
    heatmap_figure,
    icl_figures,
    line_figure,
    linearity_cost_figures,
)
from ckptlab.report.order import CHECKPOINT, ORDER, checkpoint_name, restarting, with_order, with_x
from ckptlab.report.render import render_report
from ckptlab.report.selection import (
    NEWER_COLUMNS,
    ReportError,
    Selection,
    resolve_selection,
    select_rows,
)

__all__ = [
    "BOOKKEEPING",
    "CAPABILITIES",
    "CHECKPOINT",
    "CORRELATION_COLUMNS",
    "CORRELATION_SECTION",
    "DIVERGING",
    "DPI",
    "HEAD_ANALYSES",
    "ICL_STEPS",
    "LINEARITY_COST_COLUMNS",
    "LINESTYLES",
    "MIN_STEPS",
    "NAMED",
    "NEWER_COLUMNS",
    "ORDER",
    "PALETTE",
    "RC",
    "SCATTER_PAIRS",
    "SPEARMAN_SQL",
    "TABLE_COLUMNS",
    "TABLE_ROWS",
    "TIED",
    "X_LABELS",
    "Figure",
    "Report",
    "ReportError",
    "Selection",
    "average_ranks",
    "build_report",
    "capability_series",
    "checkpoint_name",
    "correlation_figures",
    "correlation_table",
    "heatmap_figure",
    "heatmap_metrics",
    "heatmap_panels",
    "icl_figures",
    "icl_table",
    "line_figure",
    "line_series",
    "linearity_cost",
    "linearity_cost_figures",
    "pick_steps",
    "render_report",
    "representation_series",
    "resolve_selection",
    "restarting",
    "select_rows",
    "size_key",
    "spearman",
    "with_order",
    "with_x",
]
