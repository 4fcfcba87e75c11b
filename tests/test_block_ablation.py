"""block_ablation against a naive recomputation: the model's block list edited (the block
replaced by an identity module, or by a linear module fitted with numpy on hidden states from a
plain output_hidden_states pass) and the whole model rerun, CE in float64."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from test_plugins import run_inline

from ckptlab.hub import fetch_snapshot, load_model

RIDGE = 1e-8
SPEC = {
    "name": "ablation",
    "models": [{"suite": "pico", "sizes": ["s"], "steps": [0, 100]}],
    "input_sets": [{"name": "prose", "builtin": "pydoc_topics", "num_sequences": 6, "seq_len": 48}],
    "analyses": [{"name": "block_ablation", "params": {"ridge": RIDGE}}, {"name": "saturation"}],
    "resources": {"batch_size": 4},
}


class Identity(torch.nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class Linear(torch.nn.Module):
    def __init__(self, weights: np.ndarray):
        super().__init__()
        self.weights = torch.from_numpy(weights)  # [d + 1, d] float64

    def forward(self, hidden_states, *args, **kwargs):
        x = hidden_states.double()
        x1 = torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=torch.float64)], -1)
        return (x1 @ self.weights).to(hidden_states.dtype)


def naive_ce(model, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids=tokens).logits.double()
    log_probs = torch.log_softmax(logits[:, :-1], -1)
    return float(-log_probs.gather(-1, tokens[:, 1:, None]).mean())


def block_io(model, tokens) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each block's input and output over the tokens: hidden_states, the last block's output
    read before the final norm by a hook."""
    seen = {}
    hook = model.gpt_neox.final_layer_norm.register_forward_hook(
        lambda m, args, out: seen.setdefault("pre", args[0])
    )
    with torch.no_grad():
        hidden = model(input_ids=tokens, output_hidden_states=True).hidden_states
    hook.remove()
    flat = [h.reshape(-1, h.shape[-1]).double().numpy() for h in hidden]
    pre = seen["pre"].reshape(-1, hidden[0].shape[-1]).double().numpy()
    return flat[:-1], [*flat[1:-1], pre]


def ridge_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x1 = np.hstack([x, np.ones((x.shape[0], 1))])
    gram = x1.T @ x1
    return np.linalg.solve(gram + RIDGE * np.mean(np.diag(gram)) * np.eye(len(gram)), x1.T @ y)


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory, pico_hub):
    plan, summary, store = run_inline(SPEC, tmp_path_factory.mktemp("ablation"), pico_hub)
    assert summary.cells_failed == 0
    return plan, store


@pytest.mark.parametrize("step", [0, 100])
def test_block_ablation_equals_editing_the_block_list(ablation_run, pico_hub: Path, step):
    plan, store = ablation_run
    rows = {
        (metric, layer): value
        for metric, layer, value in store.query(
            "SELECT metric, layer, value FROM results WHERE analysis = 'block_ablation'"
            " AND step = ?",
            [step],
        ).iter_rows()
    }
    tokens = torch.from_numpy(plan.input_sets["pico/pico-s"]["prose"].token_ids)
    folder, _ = fetch_snapshot("pico/pico-s", f"step{step}", pico_hub, local_only=True)
    model = load_model(folder, "float32", "cpu")
    saturation = store.query(
        "SELECT value FROM results WHERE analysis = 'saturation' AND metric = 'cross_entropy'"
        " AND step = ?",
        [step],
    ).item()
    assert rows[("cross_entropy", None)] == pytest.approx(naive_ce(model, tokens), abs=1e-5)
    assert rows[("cross_entropy", None)] == pytest.approx(saturation, abs=1e-9)
    inputs, outputs = block_io(model, tokens)
    n_blocks = len(model.gpt_neox.layers)
    assert {k for _, k in rows if k is not None} == set(range(1, n_blocks + 1))
    for k in range(n_blocks):
        skipped = copy.deepcopy(model)
        skipped.gpt_neox.layers[k] = Identity()
        assert rows[("cross_entropy_skip", k + 1)] == pytest.approx(
            naive_ce(skipped, tokens), abs=1e-5
        )
        replaced = copy.deepcopy(model)
        replaced.gpt_neox.layers[k] = Linear(ridge_fit(inputs[k], outputs[k]))
        assert rows[("cross_entropy_linear", k + 1)] == pytest.approx(
            naive_ce(replaced, tokens), abs=1e-5
        )
