"""The ICL figure of docs/icl.md, from a results database (read-only): one task's accuracy against
training step, one line per number of demonstrations L (one model size), and against L averaged
over late checkpoints, one line per size. Accuracy is the mean over task seeds.

    python bench/plot_icl.py --db ~/.cache/ckptlab/results.duckdb --out docs/icl_pico.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import polars as pl

from ckptlab.home import default_db_path
from ckptlab.results import ResultStore

SQL = """
SELECT size, step, shots,
       avg(value) FILTER (metric = 'accuracy') AS accuracy,
       avg(value) FILTER (metric = 'chance_accuracy') AS chance,
       sum(value) FILTER (metric = 'n_prompts') AS prompts
FROM results WHERE analysis = 'icl' AND task = ?
GROUP BY ALL ORDER BY size, shots, step
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", type=Path, default=default_db_path())
    parser.add_argument("--task", default="category")
    parser.add_argument("--size", default="m", help="the size of the left panel")
    parser.add_argument("--late", type=int, default=600, help="right panel: steps >= this")
    parser.add_argument("--out", type=Path, default=Path("docs/icl_pico.png"))
    args = parser.parse_args()
    frame = ResultStore(args.db).query(SQL, [args.task])
    chance = frame["chance"][0]
    figure, (over_steps, over_shots) = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)

    one = frame.filter(pl.col("size") == args.size)
    for shots in one["shots"].unique().sort().to_list():
        line = one.filter(pl.col("shots") == shots)
        over_steps.plot(line["step"], line["accuracy"], marker=".", label=f"L = {shots}")
    over_steps.set_xscale("symlog", linthresh=1)
    over_steps.set_xlabel("training step")
    over_steps.set_ylabel("accuracy")
    prompts = int(one["prompts"].max())
    over_steps.set_title(f"pico-{args.size}, {args.task}: {prompts} prompts per point", fontsize=9)

    late = (
        frame.filter(pl.col("step") >= args.late)
        .group_by("size", "shots")
        .agg(pl.col("accuracy").mean(), pl.col("prompts").sum())
        .sort("size", "shots")
    )
    for size in late["size"].unique().sort().to_list():
        line = late.filter(pl.col("size") == size)
        over_shots.plot(line["shots"], line["accuracy"], marker="o", label=f"pico-{size}")
    over_shots.set_xscale("symlog", linthresh=1)
    over_shots.set_xlabel("demonstrations L")
    title = f"mean over steps >= {args.late}: {int(late['prompts'].max())} prompts per point"
    over_shots.set_title(title, fontsize=9)

    for axis in (over_steps, over_shots):
        axis.axhline(chance, color="grey", linestyle="--", label="chance")
        axis.legend(fontsize=7)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
