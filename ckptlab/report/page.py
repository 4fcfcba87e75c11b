"""The report's page, ``index.html``: one self-contained HTML file (each figure's PNG inlined
as base64, no external resource) rendered from the Jinja2 template
``templates/report.html.j2``, autoescaped. Sections: the figures by section, what predicts
what (per model the rho table, the heatmap and the scatter plots), the failures, the notes.

Owns: what the page says and in which order, and the colour of a rho cell. Must not:
select, compute or draw anything; it reads a built ``Report`` and the drawn PNGs. Jinja2 is
imported only when a page is rendered.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

# Modules, not names: the page quotes MIN_STEPS, TABLE_ROWS and TABLE_COLUMNS as read when it
# renders, the values the table and the heatmap were made with (tests set them there).
from ckptlab.report import correlation, figures
from ckptlab.report.figures import CORRELATION_SECTION, DIVERGING

if TYPE_CHECKING:
    from ckptlab.report.build import Report

TEMPLATES = Path(__file__).parent / "templates"
FAILURE_COLUMNS = ["model", "revision", "step", "analysis", "error", "run_id", "computed_since"]


def rho_colour(rho: float) -> str:
    """A light shade of the heatmap's colour for ``rho``: the text stays readable."""
    end = DIVERGING[2] if rho > 0 else DIVERGING[0]
    weight = 0.6 * min(abs(rho), 1.0)
    channels = (int(end[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(255 - weight * (255 - c)):02X}" for c in channels)


def _correlation_tables(report: Report, images: dict[str, str]) -> list[dict]:
    """Per correlation heatmap (one per model), the page's table: its data is the heatmap's
    (``figures.correlation_figures``), shown even where the heatmap failed to draw; then that
    model's drawn figures. Cells: None (no entry) or {rho, n (checkpoints), colour}."""
    section = [f for f in report.figures if f.section == CORRELATION_SECTION]
    tables = []
    for heat in [f for f in section if f.data.get("kind") == "correlation_heatmap"]:
        d = heat.data
        body = [
            (
                label,
                [
                    None if rho is None else {"rho": rho, "n": n, "colour": rho_colour(rho)}
                    for rho, n in zip(rhos, counts, strict=True)
                ],
            )
            for label, rhos, counts in zip(d["rows"], d["rho"], d["n_steps"], strict=True)
        ]
        tables.append(
            {
                "model": d["model"],
                "metrics_total": d["metrics_total"],
                "tasks_total": d["tasks_total"],
                "entries": d["entries"],
                "shown_rows": len(d["rows"]),
                "columns": d["columns"],
                "body": body,
                "figures": [
                    f for f in section if f.data.get("model") == d["model"] and f.name in images
                ],
            }
        )
    return tables


def render_page(report: Report, images: dict[str, str], db: Path, seconds: float) -> str:
    """``index.html``'s text. ``images``: figure name -> its PNG in base64, for the figures
    that were drawn (the others are left out); ``seconds``: the time the report took."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        # One line of output per line of the template that is not a tag alone on its line.
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    # Figures outside the correlation section, grouped by consecutive section (the order
    # build_report added them in); the correlation section has a layout of its own.
    shown = [f for f in report.figures if f.name in images and f.section != CORRELATION_SECTION]
    sections = [
        (section, list(group))
        for section, group in itertools.groupby(shown, key=lambda f: f.section)
    ]
    failures = None
    if report.failures is not None:
        failures = [
            ["" if row[c] is None else str(row[c]) for c in FAILURE_COLUMNS]
            for row in report.failures.iter_rows(named=True)
        ]
    correlations = report.correlations
    return env.get_template("report.html.j2").render(
        spec_name=report.selection.spec_name,
        description=report.selection.describe(),
        db=str(db),
        rows=report.rows,
        x=report.x,
        figure_count=len(report.figures),  # drawn or not
        seconds=seconds,
        sections=sections,
        images=images,
        correlations=None if correlations is None else {"entries": correlations.height},
        correlation_section=CORRELATION_SECTION,
        min_steps=correlation.MIN_STEPS,
        table_rows=figures.TABLE_ROWS,
        table_columns=figures.TABLE_COLUMNS,
        tables=[] if correlations is None else _correlation_tables(report, images),
        failure_headers=[c.replace("_", " ") for c in FAILURE_COLUMNS],
        failures=failures,
        notes=report.notes,
    )
