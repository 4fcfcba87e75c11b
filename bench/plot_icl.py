"""Plot ICL accuracy against training step, one line per number of demonstrations, from a
results database (read-only): the README's figure.

    python bench/plot_icl.py --db ~/.cache/ckptlab/results.duckdb --task category/memo_random \
        --out docs/icl_pico.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ckptlab.home import default_db_path
from ckptlab.results import ResultStore

SQL = """
SELECT size, step, shots, avg(value) AS accuracy,
       any_value(chance) AS chance
FROM results
JOIN (SELECT cell_key, task, shots, task_seed, value AS chance FROM results
      WHERE metric = 'chance_accuracy') USING (cell_key, task, shots, task_seed)
WHERE analysis = 'icl' AND metric = 'accuracy' AND task = ?
GROUP BY size, step, shots ORDER BY size, shots, step
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", type=Path, default=default_db_path())
    parser.add_argument("--task", default="category/memo_random")
    parser.add_argument("--out", type=Path, default=Path("docs/icl_pico.png"))
    args = parser.parse_args()
    frame = ResultStore(args.db).query(SQL, [args.task])
    sizes = frame["size"].unique(maintain_order=True).to_list()
    figure, axes = plt.subplots(1, len(sizes), figsize=(4 * len(sizes), 3.2), sharey=True)
    for axis, size in zip(list(axes) if len(sizes) > 1 else [axes], sizes, strict=True):
        rows = frame.filter(frame["size"] == size)
        for shots in rows["shots"].unique().sort().to_list():
            line = rows.filter(rows["shots"] == shots)
            axis.plot(line["step"], line["accuracy"], marker=".", label=f"L={shots}")
        axis.axhline(rows["chance"][0], color="grey", linestyle="--", label="chance")
        axis.set_xscale("symlog", linthresh=10)
        axis.set_title(f"pico-{size}: {args.task}")
        axis.set_xlabel("training step")
    (list(axes) if len(sizes) > 1 else [axes])[0].set_ylabel("accuracy")
    axis.legend(fontsize=7)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
