"""CUDA: a unit run on the GPU gives the CPU's numbers (fp32) and close ones in bf16, for
every single-checkpoint analysis."""

from __future__ import annotations

import numpy as np
import pytest
from huggingface_hub import snapshot_download

from ckptlab.orchestrator.checkpoints import CheckpointRef
from ckptlab.orchestrator.plan import Cell
from ckptlab.orchestrator.unit import UnitTask
from ckptlab.orchestrator.worker import pick_device, run_unit

pytestmark = pytest.mark.gpu

ANALYSES = (
    "saturation",
    "anisotropy",
    "singular_entropy",
    "linearity",
    "logit_lens",
    "head_rank_proxy",
    "dispersion",
    "intrinsic_dimension",
    "neuron_entropy",
)


def _cell(name: str) -> Cell:
    """A cell with the analysis' default params (cka needs a reference sketch: not here)."""
    weights_only = name == "singular_entropy"
    return Cell(
        name,
        name,
        name,
        1,
        "{}",
        "h",
        None if weights_only else "a",
        None if weights_only else "id-a",
    )


def _values(pico_hub, device: str, dtype: str) -> dict:
    folder = snapshot_download(
        "pico/pico-s", revision="step100", cache_dir=pico_hub, local_files_only=True
    )
    tokens = np.random.default_rng(0).integers(0, 512, size=(16, 64))
    task = UnitTask(
        CheckpointRef("pico/pico-s", "step100", 100, "hub", local_only=True),
        folder.rsplit("/", 1)[1],
        [_cell(a) for a in ANALYSES],
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
    return {(m.cell_key, m.metric, m.layer, m.item): m.value for m in result.metrics}


def test_cuda_matches_cpu(pico_hub):
    assert pick_device(want_gpu=True) == "cuda"
    cpu = _values(pico_hub, "cpu", "float32")
    cuda = _values(pico_hub, "cuda", "float32")
    assert cpu.keys() == cuda.keys()
    assert {key[0] for key in cpu} == set(ANALYSES)
    for key, value in cpu.items():
        assert cuda[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    bf16 = _values(pico_hub, "cuda", "bfloat16")
    ce = ("saturation", "cross_entropy", None, None)
    assert bf16[ce] == pytest.approx(cpu[ce], rel=0.02)
    for key, value in cpu.items():
        if key[0] == "anisotropy":
            assert bf16[key] == pytest.approx(value, abs=0.02), key
