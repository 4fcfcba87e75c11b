"""``render_report``: the files of one report in one folder: ``<name>.png`` and ``<name>.svg``
per figure, ``correlations.csv`` (where there are task accuracies), ``figures.json`` (each
drawn figure's plotted numbers, strict JSON) and ``index.html``; files an earlier report
wrote there and this one did not are removed.

Owns: the folder and what is written into it. Must not: select rows, compute, draw or word
the page itself (``build``, ``figures``, ``page`` do).
"""

from __future__ import annotations

import base64
import json
import math
import time
from pathlib import Path

from ckptlab.report.build import build_report
from ckptlab.report.figures import save_figures
from ckptlab.report.page import render_page
from ckptlab.report.selection import resolve_selection
from ckptlab.results import ResultStore


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
    index.html). ``x="tokens"`` plots against the checkpoints' ``tokens_seen`` where every
    checkpoint has it (else the step, with a note); where steps restart in a later stage, x is
    never the step (``with_x``). Files an earlier report wrote into ``out`` and this one did
    not are removed. ReportError where there is nothing to select from
    (``resolve_selection``)."""
    started = time.perf_counter()
    store = ResultStore(Path(db))
    selection = resolve_selection(store, spec_name, run_id)
    report = build_report(store, selection, x)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    images: dict[str, str] = {}  # figure name -> its PNG in base64, for the page
    drawn: list[dict] = []  # figures.json's entries
    for figure, png in save_figures(report.figures, out, report.notes):
        images[figure.name] = base64.b64encode(png).decode("ascii")
        written += [out / f"{figure.name}.png", out / f"{figure.name}.svg"]
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
    page.write_text(render_page(report, images, Path(db), time.perf_counter() - started))
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
