"""ckptlab: representation analyses over every checkpoint of language-model training runs.

``import ckptlab`` stays light (no torch, no Ray): the one function here imports what it
needs when called. See docs/python-api.md.

Owns: ``__version__`` and ``load_results``. Must not: import ``ckptlab.results``, polars or
anything heavy at import time (only inside ``load_results``: the FACADE of
tests/test_layout.py); every command imports this package first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    import polars as pl

__version__ = "0.1.0"

__all__ = ["__version__", "load_results"]


def load_results(db: str | Path | None = None, **filters: Any) -> pl.DataFrame:
    """The ``results`` view (one row per value) as a polars DataFrame, read-only.

    ``db``: the results DuckDB file; default ``$CKPTLAB_HOME/results.duckdb``. Each keyword
    filters one column of the view: a scalar keeps rows equal to it (``None``: the column is
    NULL), a list, tuple or set keeps rows whose value is one of them, e.g.
    ``load_results(model="pico/pico-m", metric="anisotropy", layer=[0, 4])``. An unknown
    column is a ValueError naming the valid ones. Rows come ordered by model, step, analysis,
    metric, layer, item, task, shots, task_seed.

    It reads through ``ResultStore``: a connection held only for this call (safe while a run
    writes), read-only, with file access disabled.
    """
    from ckptlab.home import default_db_path
    from ckptlab.results import ResultStore

    store = ResultStore(default_db_path() if db is None else db)
    with store.reader() as con:
        columns = [row[0] for row in con.execute("DESCRIBE results").fetchall()]
        unknown = sorted(set(filters) - set(columns))
        if unknown:
            raise ValueError(
                f"load_results: unknown filter(s) {', '.join(unknown)}; the results view's "
                f"columns are: {', '.join(columns)}"
            )
        where, params = [], []
        for name, wanted in filters.items():
            column = f'"{name}"'  # a column name checked above, never user text in SQL
            if isinstance(wanted, list | tuple | set | frozenset):
                values = [v for v in wanted if v is not None]
                terms = [f"{column} IS NULL"] if len(values) < len(wanted) else []
                if values:
                    terms.append(f"list_contains(?, {column})")
                    params.append(values)
                where.append(f"({' OR '.join(terms)})" if terms else "FALSE")
            elif wanted is None:
                where.append(f"{column} IS NULL")
            else:
                where.append(f"{column} = ?")
                params.append(wanted)
        order = ("model", "step", "analysis", "metric", "layer", "item", "task", "shots")
        order_by = ", ".join(f'"{c}" NULLS FIRST' for c in (*order, "task_seed") if c in columns)
        sql = "SELECT * FROM results" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += f" ORDER BY {order_by}" if order_by else ""
        table = (con.sql(sql, params=params) if params else con.sql(sql)).to_arrow_table()
    import polars as pl

    return pl.from_arrow(table)
