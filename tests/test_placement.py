"""Size-aware placement: what a unit of a model needs, read from its config, and the worker
shape it gets (shares of a GPU, whole GPUs, none on a CPU cluster)."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import snapshot_download
from transformers import AutoModelForCausalLM

from ckptlab.analyses.registry import Need
from ckptlab.orchestrator.placement import (
    CONTEXT_BYTES,
    PlacementError,
    Shape,
    parameter_count,
    unit_bytes,
    worker_shape,
)

PYTHIA_410M = {
    "model_type": "gpt_neox",
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "vocab_size": 50304,
    "max_position_embeddings": 2048,
    "rotary_pct": 0.25,
    "use_parallel_residual": True,
    "tie_word_embeddings": False,
}


def test_parameters_are_counted_from_the_config_alone(pico_hub):
    folder = snapshot_download("pico/pico-s", revision="step0", cache_dir=pico_hub,
                               local_files_only=True)  # fmt: skip
    config = json.loads((__import__("pathlib").Path(folder) / "config.json").read_text())
    real = AutoModelForCausalLM.from_pretrained(folder)
    assert parameter_count(json.dumps(config, sort_keys=True)) == sum(
        p.numel() for p in real.parameters()
    )
    # Pythia-410m's published count: 405,334,016 parameters.
    assert parameter_count(json.dumps(PYTHIA_410M, sort_keys=True)) == 405_334_016


def test_a_unit_needs_its_weights_one_batch_and_the_states():
    weights_bf16 = 405_334_016 * 2
    lean = unit_bytes(PYTHIA_410M, "bfloat16", 8, 512, {Need.LM_HEAD})
    assert weights_bf16 < lean < 1.3 * weights_bf16
    full = unit_bytes(PYTHIA_410M, "bfloat16", 8, 512, {Need.HIDDEN_STATES, Need.TOKEN_NLL,
                                                        Need.MLP_ACTIVATIONS})  # fmt: skip
    tokens = 8 * 512
    activations = tokens * 1024 * 26 * 2 + tokens * 4096 * 24 * 2 + 2 * tokens * 50304 * 4
    assert full > lean + activations  # plus the R factors and per-type mass
    assert unit_bytes(PYTHIA_410M, "float32", 8, 512, {Need.LM_HEAD}) > 1.9 * lean


@pytest.mark.parametrize(
    ("need_gib", "gpus", "expected"),
    [
        (0.05, "auto", 0.125),  # a small model: an eighth of a 16 GiB GPU
        (3.0, "auto", 0.25),  # (3 GiB + the CUDA context) / 16 GiB -> 0.25
        (15.0, "auto", 1.0),
        (20.0, "auto", 2.0),  # more than one GPU: two on one node, device_map
        (0.05, 0.5, 0.5),  # a fixed share is kept whatever the model
    ],
)
def test_worker_shapes(need_gib, gpus, expected):
    shape = worker_shape(int(need_gib * 2**30), 1.0, gpus, 16 * 2**30, max_gpus=8)
    assert shape == Shape(1.0, expected)
    assert expected >= (need_gib * 2**30 + CONTEXT_BYTES) / (16 * 2**30) or gpus != "auto"


def test_auto_on_a_cluster_without_gpus_is_cpu_and_unknown_memory_is_one_line():
    assert worker_shape(10**12, 2.0, "auto", None, max_gpus=0) == Shape(2.0, 0.0)
    with pytest.raises(PlacementError, match=r"set resources\.gpu_memory_gib"):
        worker_shape(10**9, 1.0, "auto", None, max_gpus=1)


def test_meta_counting_allocates_nothing():
    before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    big = dict(PYTHIA_410M, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
               intermediate_size=16384)  # fmt: skip
    assert parameter_count(json.dumps(big, sort_keys=True)) > 6e9  # a 6.9b shape, on meta
    assert (torch.cuda.memory_allocated() if torch.cuda.is_available() else 0) == before
