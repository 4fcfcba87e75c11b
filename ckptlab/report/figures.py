"""The report's figures: what each one plots (a ``Figure``: its data for ``figures.json`` and
a function that draws it) and the drawing itself, with matplotlib (Agg, no display), into a
PNG and an SVG per figure (``save_figures``). Colorblind-safe: Okabe-Ito lines, viridis maps.

- ``saturation``: cross-entropy vs step; ``lm_head_singular_entropy``: KL(p‖uniform) of the
  LM head's normalised singular values vs step (the legend says which models' heads are tied
  to the input embeddings, as on every ``singular_entropy`` figure);
- ``line__<analysis>__<metric>``: every other scalar or per-layer metric (``task`` NULL) vs
  step, one line per model (colour = size, line style = seed); a per-layer metric is drawn at
  each model's **last layer** (the legend names it), the heatmaps show every layer. The x axis
  is the training step on matplotlib's ``symlog`` scale with ``linthresh=1`` (linear on [0, 1],
  logarithmic above), so step 0 is drawn as itself, not shifted. Where some model's steps
  restart in a later stage, x is what ``order.with_x`` chose (ticks name stage and step);
- ``heatmap__<analysis>__<metric>``: layer × checkpoint for metrics with several layers, one
  panel per model, one colour scale per figure; columns are the checkpoints in training order;
- ``icl__<model>``: ICL accuracy vs number of demonstrations, a few checkpoints (colour =
  training order), mean over task seeds, chance (``chance_accuracy``) and the bag-of-words
  baseline (``bow_accuracy``, mean over the drawn checkpoints), one panel per task;
- ``linearity_cost__<model>``: each block's linearity against what removing it costs, one
  point per (block, checkpoint), coloured by training order;
- ``correlation__<model>``: a heatmap of rho (the TABLE_ROWS metrics with the largest max
  |rho| × up to TABLE_COLUMNS task accuracies; the page's table is its data) and
  ``correlation_scatter__<model>``: the SCATTER_PAIRS strongest pairs.

Owns: every matplotlib import (inside functions: importing this module stays light), the
figures' names, titles, sections, sizes, colours and styles. Must not: query the database,
compute a statistic (series come from ``data``, rho from ``correlation``), or write anything
but the figure files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ckptlab.errors import one_line
from ckptlab.report.correlation import (
    CORRELATION_COLUMNS,
    average_ranks,
    capability_series,
    pairs_at,
    representation_series,
)
from ckptlab.report.data import (
    finite,
    heatmap_panels,
    labels_of,
    model_key,
    model_order,
    models_of,
    pick_steps,
    rows_of,
    size_key,
    tied_suffix,
)
from ckptlab.report.order import CHECKPOINT, ORDER, checkpoint_name

DPI = 100
# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency. Yellow last.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#000000", "#F0E442")
LINESTYLES = ("-", "--", ":", "-.")
# (analysis, metric) -> (file stem, title, y label): the curves drawn first, by name.
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


@dataclass
class Figure:
    name: str  # file stem
    title: str
    section: str
    data: dict  # what is plotted, for figures.json
    draw: Callable  # (matplotlib Figure) -> None
    size: tuple[float, float] = (6.4, 4.0)


# ------------------------------------------------------------------ axes and styles


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
    """Per ``model_key``: colour by size (by model where sizes do not tell the models apart),
    line style by seed and variant."""
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
        style[model_key(m)] = {
            "color": PALETTE[colours.index(colour_key(m)) % len(PALETTE)],
            "linestyle": LINESTYLES[dash % len(LINESTYLES)],
        }
    return style


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


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


# --------------------------------------------------------------- curves and heatmaps


def line_figure(series: pl.DataFrame, analysis: str, metric: str, x: str) -> Figure:
    """One metric over training, a line per (model, seed, variant). ``series``:
    ``data.line_series``."""
    part = series.filter((pl.col("analysis") == analysis) & (pl.col("metric") == metric))
    per_layer = part["layer"].is_not_null().any()
    models = models_of(part)
    style, labels = _style(models), labels_of(models)
    lines = []
    for m in models:
        line = rows_of(part, m)  # one row per checkpoint, in training order (line_series)
        layer = line["layer"][0]
        tied_head = line["tied_head"].max()
        label = labels[model_key(m)] + tied_suffix(analysis, tied_head)
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
                "y": [finite(v) for v in line["value"]],
                "style": style[model_key(m)],
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
    """Layer × checkpoint of one metric, a panel per (model, seed, variant), one colour scale;
    None where no model has the metric per layer. ``rows``: ``select_rows`` with ``x``."""
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


# ------------------------------------------------------------------------------- ICL


def icl_figures(table: pl.DataFrame, x: str) -> list[Figure]:
    """Per (model, seed, variant): ICL accuracy vs demonstrations at a few checkpoints, a panel
    per task. ``table``: ``data.icl_table``."""
    figures = []
    if table.height == 0:
        return figures
    models = models_of(table)
    labels = labels_of(models)
    for m in models:
        part = rows_of(table, m)
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
                            "accuracy": [finite(v) for v in line["accuracy"]],
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
                    "chance": finite(chance.mean()) if len(chance) else None,
                    "bow": {"shots": bow["shots"].to_list(), "accuracy": bow["bow"].to_list()},
                    "lines": lines,
                }
            )
        label = labels[model_key(m)]
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
        name, size = f"icl__{_slug(label)}", (3.6 * ncols + 1.8, 3.0 * nrows + 0.7)
        figures.append(Figure(name, title, "In-context learning", data, draw, size))
    return figures


# -------------------------------------------------------------- what predicts what


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


def correlation_figures(table: pl.DataFrame, rows: pl.DataFrame, x: str = "step") -> list[Figure]:
    """Per model: a heatmap of rho (the TABLE_ROWS metrics with the largest max |rho| x every
    task accuracy; the HTML table is its data) and scatter plots of the SCATTER_PAIRS
    strongest pairs, at most one per (metric, task accuracy) whatever the layer, and none
    whose metric ranks the checkpoints as a drawn one does against the same accuracy. Points
    are coloured by training order on the report's axis ``x`` (the ``x`` column of ``rows``,
    else the step). ``table``: ``correlation.correlation_table`` of ``rows``."""
    figures: list[Figure] = []
    if table.height == 0:
        return figures
    metrics, capabilities = representation_series(rows), capability_series(rows)
    metric_keys = ["metric", "layer", "input_set"]
    task_keys = ["task", "capability_metric", "shots"]
    for model in [m for m in model_order(rows) if m in set(table["model"])]:
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
            points = pairs_at(xs, ys, CHECKPOINT).sort("seed", *ORDER, nulls_last=True)
            # A metric that is a monotone map of one already drawn against this accuracy
            # (effective rank = exp(spectral entropy), ...) has the same ranks, the same or the
            # mirrored order: the same panel again.
            ranks = tuple(average_ranks(points["value"]).to_list())
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


# --------------------------------------------------------- linearity vs removal cost


def linearity_cost_figures(
    frame: pl.DataFrame, models: list[str] | None = None, x: str = "step"
) -> list[Figure]:
    """Per (model, input set, dtype, seed): a block's linearity against what removing it
    costs (skipped; replaced by its fitted linear map), one point per (block, checkpoint),
    coloured by training order on the report's axis ``x``, each block's points joined in
    training order and labelled at the last checkpoint. ``frame``: ``data.linearity_cost``;
    ``models``: the order of the figures (``data.model_order``)."""
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


# --------------------------------------------------------------------------- saving


def save_figures(figures: list[Figure], out: Path, notes: list[str]) -> list[tuple[Figure, bytes]]:
    """Draw each figure into ``out/<name>.png`` and ``out/<name>.svg`` (Agg, RC), in order. A
    figure that fails to draw gets a note in ``notes`` and leaves neither file. Returns the
    drawn figures with their PNG's bytes (the page inlines them)."""
    import io

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    drawn: list[tuple[Figure, bytes]] = []
    with matplotlib.rc_context(RC):
        for figure in figures:
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
                notes.append(f"{figure.title}: not drawn ({one_line(err, first=True)})")
                for path in (png, svg):
                    path.unlink(missing_ok=True)
                continue
            drawn.append((figure, buffer.getvalue()))
    return drawn
