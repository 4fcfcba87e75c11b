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
stays quick). The names below are what callers outside the package use; anything else is
imported from (and, in a test, set on) the module that owns it (e.g.
``ckptlab.report.figures.TABLE_COLUMNS``).

Owns: the package's public names (re-exports only). Must not: import matplotlib or Jinja2 at
import time, write to the results database (a report only reads it), or import
``orchestrator/``.
"""

from ckptlab.report.correlation import (
    CORRELATION_COLUMNS,
    SPEARMAN_SQL,
    correlation_table,
    spearman,
)
from ckptlab.report.data import BOOKKEEPING, TIED, linearity_cost, pick_steps
from ckptlab.report.figures import DPI, correlation_figures
from ckptlab.report.render import render_report
from ckptlab.report.selection import ReportError, resolve_selection, select_rows

__all__ = [
    "BOOKKEEPING",
    "CORRELATION_COLUMNS",
    "DPI",
    "SPEARMAN_SQL",
    "TIED",
    "ReportError",
    "correlation_figures",
    "correlation_table",
    "linearity_cost",
    "pick_steps",
    "render_report",
    "resolve_selection",
    "select_rows",
    "spearman",
]
