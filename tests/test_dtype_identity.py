"""The dtype the weights ran in is part of a cell: a spec run in float32, then in bfloat16 on
the same results file, computes the bfloat16 cells itself (it does not return the float32
rows), and the ``results`` view tells them apart by its ``dtype`` column."""

from __future__ import annotations

import pytest
from test_plugins import run_inline

from ckptlab.analyses.registry import get_analysis
from ckptlab.orchestrator.plan import DEFAULT_DTYPE, cell_key, reference_key

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
    assert reference_key("c" * 40, "i", 8, 0, "bfloat16") != reference_key("c" * 40, "i", 8, 0)


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
