"""The single forward pass: captures equal a plain transformers forward, and only what is
needed is captured; a unit loads its checkpoint once and runs one pass per input set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import snapshot_download

import ckptlab.orchestrator.input_set_pass as pass_module
import ckptlab.orchestrator.worker as worker_module
from ckptlab import architectures
from ckptlab.analyses.capture import Unavailable
from ckptlab.analyses.logit_lens import logit_lens
from ckptlab.analyses.registry import Need, NoParams
from ckptlab.architectures import LogitOp
from ckptlab.hub import load_model, load_tokenizer
from ckptlab.orchestrator.checkpoints import CheckpointRef
from ckptlab.orchestrator.forward import capture_forward, final_norm_module
from ckptlab.orchestrator.plan import Cell
from ckptlab.orchestrator.unit import UnitTask
from ckptlab.orchestrator.worker import run_unit

from reference import naive_cross_entropy


@pytest.fixture(scope="module")
def pico_s(pico_hub):
    folder = snapshot_download(
        "pico/pico-s", revision="step100", cache_dir=pico_hub, local_files_only=True
    )
    return load_model(Path(folder), "float32", "cpu")


def _tokens(seed=0, seq=5, pos=24) -> torch.Tensor:
    return torch.randint(0, 512, (seq, pos), generator=torch.Generator().manual_seed(seed))


def test_capture_equals_a_plain_transformers_forward(pico_s):
    tokens = _tokens()
    capture = capture_forward(
        pico_s, tokens, set(Need), batch_size=2, tokenizer_vocab_size=512
    )  # 3 batches
    with torch.no_grad():
        out = pico_s(input_ids=tokens, output_hidden_states=True)
    assert len(capture.hidden_states) == pico_s.config.num_hidden_layers + 1
    for mine, theirs in zip(capture.hidden_states, out.hidden_states, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    # hidden_states[L] is after the final norm; pre_final_norm is what goes into it.
    with torch.no_grad():
        normed = final_norm_module(pico_s)(capture.pre_final_norm)
    torch.testing.assert_close(normed, out.hidden_states[-1])
    assert not torch.allclose(capture.pre_final_norm, out.hidden_states[-1])
    # Token NLL against a float64 log-softmax loop over the full model's logits.
    expected = naive_cross_entropy(out.logits.numpy(), tokens.numpy())
    assert capture.token_nll.shape == (5, 23)
    assert capture.token_nll.dtype == torch.float32
    assert float(capture.token_nll.double().mean()) == pytest.approx(expected, rel=1e-6)
    assert capture.lm_head_weight.shape == (512, 64)


def test_only_what_is_needed_is_captured(pico_s):
    calls = []
    hook = pico_s.base_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        nll_only = capture_forward(pico_s, _tokens(), {Need.TOKEN_NLL}, 2, 512)
        assert nll_only.hidden_states is None and nll_only.pre_final_norm is None
        assert nll_only.lm_head_weight is None and nll_only.token_nll is not None
        assert len(calls) == 3  # one call per batch of the single pass
        weights_only = capture_forward(pico_s, _tokens(), {Need.LM_HEAD}, 2, 512)
        assert weights_only.lm_head_weight is not None and weights_only.hidden_states is None
        assert len(calls) == 3  # no forward pass for weight-only analyses
    finally:
        hook.remove()


def test_the_readout_self_check_passes_and_catches_a_small_error(pico_s, monkeypatch):
    """The readout (final norm + head + the family's post-processing) reproduces the model's
    logits on pico; a post-processing off by 0.1 % is caught, the pass goes on without it."""
    needs = {Need.HIDDEN_STATES, Need.READOUT, Need.TOKEN_NLL}
    capture = capture_forward(pico_s, _tokens(), needs, 2, 512)
    assert capture.unavailable == {}
    monkeypatch.setattr(architectures, "logit_op", lambda model: LogitOp("multiply", 1.001))
    capture = capture_forward(pico_s, _tokens(), needs, 2, 512)
    why = capture.unavailable[Need.READOUT]
    assert why.startswith("readout self-check failed: final_norm+head gives logits up to ")
    assert why.endswith("model_type gpt_neox)") and "\n" not in why
    with pytest.raises(Unavailable, match="readout self-check failed"):
        logit_lens(capture, NoParams())
    assert capture.hidden_states is not None and capture.token_nll is not None


def test_a_unit_loads_once_and_runs_one_pass_per_input_set(pico_hub, monkeypatch):
    loads, passes = [], []
    real_load, real_stream = worker_module.load_model, pass_module.stream_forward
    monkeypatch.setattr(
        worker_module, "load_model", lambda *a, **k: loads.append(1) or real_load(*a, **k)
    )

    def counting_stream(model, tokens, needs, *args):
        passes.append((tokens is not None, frozenset(needs)))
        return real_stream(model, tokens, needs, *args)

    monkeypatch.setattr(pass_module, "stream_forward", counting_stream)
    folder = snapshot_download(
        "pico/pico-xs", revision="step4", cache_dir=pico_hub, local_files_only=True
    )
    ref = CheckpointRef("pico/pico-xs", "step4", 4, "hub", local_only=True)
    cells = [
        Cell(f"k-{a}-{s}", a, a, 1, "{}", "h", s, f"id-{s}")
        for a in ("saturation", "anisotropy")
        for s in ("a", "b")
    ] + [
        Cell(
            "k-se",
            "singular_entropy",
            "singular_entropy",
            1,
            '{"trim_padded_rows":true}',
            "h",
            None,
            None,
        )
    ]
    tokens = np.random.default_rng(0).integers(0, 512, size=(4, 16))
    task = UnitTask(
        ref,
        folder.rsplit("/", 1)[1],
        cells,
        {"a": tokens, "b": tokens[::-1].copy()},
        pico_hub,
        "float32",
        2,
        False,
        False,
    )
    result = run_unit(task, "cpu")
    assert not result.failures
    assert len(result.cells) == 5
    assert len(loads) == 1
    forward_passes = [needs for has_tokens, needs in passes if has_tokens]
    assert len(forward_passes) == 2  # one per input set, each with the union of needs
    assert all(
        needs == {Need.TOKEN_NLL, Need.HIDDEN_STATES, Need.PRE_FINAL_NORM}
        for needs in forward_passes
    )
    assert len(load_tokenizer(Path(folder))) == 512
