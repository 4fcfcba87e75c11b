"""CUDA: a unit run on the GPU gives the CPU's numbers (fp32) and close ones in bf16."""

from __future__ import annotations

import numpy as np
import pytest
from huggingface_hub import snapshot_download

from orchestrator.plan import Cell, CheckpointRef
from orchestrator.worker import UnitTask, pick_device, run_unit

pytestmark = pytest.mark.gpu

CELLS = [
    Cell("sat", "saturation", "saturation", 1, "{}", "h", "a", "id-a"),
    Cell("ani", "anisotropy", "anisotropy", 1, '{"drop_first_position":false}', "h", "a", "id-a"),
    Cell(
        "se",
        "singular_entropy",
        "singular_entropy",
        1,
        '{"trim_padded_rows":true}',
        "h",
        None,
        None,
    ),
]


def _values(pico_hub, device: str, dtype: str) -> dict:
    folder = snapshot_download(
        "pico/pico-s", revision="step100", cache_dir=pico_hub, local_files_only=True
    )
    tokens = np.random.default_rng(0).integers(0, 512, size=(16, 64))
    task = UnitTask(
        CheckpointRef("pico/pico-s", "step100", 100, "hub", local_only=True),
        folder.rsplit("/", 1)[1],
        CELLS,
        {"a": tokens},
        pico_hub,
        dtype,
        8,
        False,
        False,
    )
    result = run_unit(task, device)
    assert not result.failures, result.failures
    assert result.device == device and {c.device for c in result.cells} == {device}
    return {(m.cell_key, m.metric, m.layer): m.value for m in result.metrics}


def test_cuda_matches_cpu(pico_hub):
    assert pick_device(want_gpu=True) == "cuda"
    cpu = _values(pico_hub, "cpu", "float32")
    cuda = _values(pico_hub, "cuda", "float32")
    assert cpu.keys() == cuda.keys()
    for key, value in cpu.items():
        assert cuda[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    bf16 = _values(pico_hub, "cuda", "bfloat16")
    assert bf16[("sat", "cross_entropy", None)] == pytest.approx(
        cpu[("sat", "cross_entropy", None)], rel=0.02
    )
    for key, value in cpu.items():
        if key[0] == "ani":
            assert bf16[key] == pytest.approx(value, abs=0.02), key
