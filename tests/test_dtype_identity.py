"""The dtype the weights ran in is part of a cell: a spec run in float32, then in bfloat16 on
the same results file, computes the bfloat16 cells itself (it does not return the float32
rows), and the ``results`` view tells them apart by its ``dtype`` column."""

from __future__ import annotations

import pytest
from test_plugins import run_inline

from ckptlab.analyses.registry import get_analysis
from ckptlab.keys import cell_identity
from ckptlab.orchestrator.plan import DEFAULT_DTYPE, cell_key, sketch_key
from ckptlab.results import ResultStore
from ckptlab.rows import CellRow, CheckpointRow, MetricRow

SPEC = {
    "name": "dtypes",
    "models": [{"suite": "pico", "sizes": ["xs"], "steps": [0, 100]}],
    "input_sets": [{"name": "prose", "builtin": "pydoc_topics", "num_sequences": 4, "seq_len": 32}],
    "analyses": [{"name": "saturation"}, {"name": "singular_entropy"}],
}


def test_float32_keys_are_unchanged_and_other_dtypes_are_new_cells():
    saturation = get_analysis("saturation")
    before = cell_key("c" * 40, saturation, "{}", "inputs")  # what stored cells were keyed by
    assert cell_key("c" * 40, saturation, "{}", "inputs", DEFAULT_DTYPE) == before
    assert cell_key("c" * 40, saturation, "{}", "inputs", "bfloat16") != before
    assert sketch_key("c" * 40, "i", 8, 0, "bfloat16") != sketch_key("c" * 40, "i", 8, 0)


def test_a_bf16_rerun_computes_its_own_cells(pico_hub, tmp_path):
    _, first, store = run_inline(SPEC, tmp_path, pico_hub)
    assert first.cells_computed == 4 and first.cells_failed == 0
    bf16 = SPEC | {"resources": {"dtype": "bfloat16"}}
    _, second, _ = run_inline(bf16, tmp_path, pico_hub)
    assert second.cells_cached == 0 and second.cells_computed == 4  # nothing taken from fp32
    rows = store.query(
        "SELECT step, dtype, value FROM results WHERE metric = 'cross_entropy' ORDER BY step, dtype"
    ).rows()
    assert [(step, dtype) for step, dtype, _ in rows] == [
        (0, "bfloat16"), (0, "float32"), (100, "bfloat16"), (100, "float32")
    ]  # fmt: skip
    for (_, _, bf), (_, _, fp) in zip(rows[::2], rows[1::2], strict=True):
        assert bf != fp and bf == pytest.approx(fp, rel=0.02)  # bf16: close, not equal
    # A third run in either dtype finds everything stored.
    _, third, _ = run_inline(bf16, tmp_path, pico_hub)
    assert third.run_id is None and third.cells_cached == 4


def test_cells_of_another_dtype_under_the_old_float32_key_are_rekeyed_once(tmp_path):
    """A bf16 cell stored before the dtype joined the key sits under the float32 key: opening
    the database gives it its bf16 key (its metrics and failures follow), once."""
    store = ResultStore(tmp_path / "r.duckdb")
    store.ensure_schema()  # the migration finds nothing, and is marked done: undo that mark
    with store.transaction() as con:
        con.execute("DELETE FROM migrations")
    identity = ("c" * 40, "saturation", 1, "{}", "inputs", None)
    old = cell_identity(*identity)  # what a bf16 run stored before this change
    fp32 = cell_identity(*identity[:5], "x" * 64)  # a plug-in's fp32 cell: untouched
    store.write_unit(
        "run",
        CheckpointRow("m", "step1", 1, "c" * 40, None, None, None),
        [CellRow(old, "c" * 40, "saturation", 1, "{}", "h", "inputs", "cpu", "bfloat16", 0.1),
         CellRow(fp32, "c" * 40, "saturation", 1, "{}", "h", "inputs", "cpu", "float32", 0.1)],
        [MetricRow(old, None, "cross_entropy", 3.0), MetricRow(fp32, None, "cross_entropy", 2.0)],
        [],
    )  # fmt: skip
    store.ensure_schema()
    new = cell_identity(*identity, "bfloat16")
    rows = store.query("SELECT cell_key, dtype, value FROM results ORDER BY value").rows()
    assert rows == [(fp32, "float32", 2.0), (new, "bfloat16", 3.0)]
    assert store.done_cell_keys([old, new]) == {new}
    store.ensure_schema()  # once: a second open changes nothing
    assert store.query("SELECT cell_key FROM cells ORDER BY cell_key").rows() == sorted(
        [(fp32,), (new,)]
    )
