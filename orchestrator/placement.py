"""Size-aware placement: how much memory one unit of a model needs, and what a worker for it
asks Ray for. Small checkpoints share a GPU (fractional ``num_gpus``), large ones get a whole
GPU or several on one node (loaded with ``device_map="auto"``), and a model that fits no node
is refused before anything runs.

The estimate is read from the checkpoint's config, never its weights: parameters counted on
PyTorch's meta device (no memory), times the dtype's size, plus one batch's activations and
the analyses' states, plus a margin for the CUDA context and allocator slack.

Owns: ``unit_bytes``, ``parameter_count`` and ``worker_shape`` (what a worker asks Ray for).
Must not: start workers or talk to Ray (``executors.py``), load weights, or import torch or
transformers at module level.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

from ckptlab.analyses.registry import FORWARD_NEEDS, Need

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MARGIN = 1.2  # allocator slack and temporaries
CONTEXT_BYTES = 600 * 2**20  # a CUDA context and kernels
GPU_STEP = 1 / 8  # GPU shares are multiples of this: 8 small workers per GPU at most


class PlacementError(RuntimeError):
    """A model that no node of the cluster can hold; ``str(err)`` is one line."""


@functools.cache
def parameter_count(config_json: str) -> int:
    """Parameters of the model a config describes, counted on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config_dict = json.loads(config_json)
    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _get(config: dict, *names: str, default: int = 0) -> int:
    for name in names:
        if config.get(name) is not None:
            return int(config[name])
    return default


def unit_bytes(config: dict, dtype: str, batch_size: int, seq_len: int, needs: set[Need]) -> int:
    """Memory one unit of this model needs on its device, in bytes."""
    width = DTYPE_BYTES[dtype]
    d_model = _get(config, "hidden_size", "n_embd", "d_model")
    layers = _get(config, "num_hidden_layers", "n_layer", "num_layers")
    d_mlp = _get(config, "intermediate_size", "n_inner", default=4 * d_model)
    vocab = _get(config, "vocab_size")
    tokens = batch_size * seq_len
    weights = parameter_count(json.dumps(config, sort_keys=True)) * width
    # One batch, when there is a pass: the forward's own working set, every layer's hidden
    # states (kept for the analyses), the MLP activations when captured, fp32 logits and
    # their log-softmax for the NLL.
    batch = 0
    if needs & FORWARD_NEEDS:
        batch = tokens * d_model * 4 * width + tokens * d_mlp * width
        if needs & {Need.HIDDEN_STATES, Need.PRE_FINAL_NORM}:
            batch += tokens * d_model * (layers + 2) * width
        if Need.MLP_ACTIVATIONS in needs:
            batch += tokens * d_mlp * layers * width
        if needs & {Need.TOKEN_NLL, Need.READOUT}:
            batch += 2 * tokens * vocab * 4
    # The largest states: linearity's R factors, neuron entropy's mass per token type.
    states = 0
    if Need.HIDDEN_STATES in needs:
        states += layers * (1 + 2 * d_model) ** 2 * 8
    if Need.MLP_ACTIVATIONS in needs:
        states += min(vocab, tokens * 64) * d_mlp * layers * 8
    return int(MARGIN * (weights + batch + states))


@dataclass(frozen=True)
class Shape:
    """What one worker asks Ray for."""

    cpus: float
    gpus: float

    def describe(self) -> str:
        return f"{self.cpus:g} CPU" + (f", {self.gpus:g} GPU" if self.gpus else "")


def worker_shape(
    need: int, cpus: float, gpus: float | str, gpu_bytes: float | None, max_gpus: float
) -> Shape:
    """The worker for a unit that needs ``need`` bytes. ``gpus`` is the spec's
    gpus_per_worker: a number is used as is; "auto" sizes it to the model."""
    if gpus != "auto":
        return Shape(cpus, float(gpus))
    if not max_gpus:
        return Shape(cpus, 0.0)
    if gpu_bytes is None:
        raise PlacementError(
            "resources.gpus_per_worker is auto but the GPUs' memory is unknown (no CUDA on "
            "the GPU nodes?): set resources.gpu_memory_gib"
        )
    share = (need + CONTEXT_BYTES) / gpu_bytes
    if share <= 1:
        return Shape(cpus, max(GPU_STEP, math.ceil(share / GPU_STEP) * GPU_STEP))
    return Shape(cpus, float(math.ceil(share)))
