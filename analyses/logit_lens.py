"""Logit lens: how well each layer already predicts the next token."""

from __future__ import annotations

from ckptlab.analyses.capture import Capture
from ckptlab.analyses.readout import readout_cross_entropy
from ckptlab.analyses.registry import MetricValue, Need, NoParams, analysis


@analysis(name="logit_lens", version=1, needs={Need.HIDDEN_STATES, Need.READOUT})
def logit_lens(capture: Capture, params: NoParams) -> list[MetricValue]:
    """Logit-lens cross-entropy per layer (nostalgebraist 2020, "interpreting GPT: the logit
    lens"; Belrose et al. 2023 for its failure modes).

        CE_k = mean_t -ln softmax(W_U norm(h^k_t))[x_{t+1}],   h^k = hidden_states[k]

    for k = 0..L-1 through the model's own final norm and LM head; at k = L hidden_states[L]
    is already normed, so CE_L is the model's cross-entropy (equal to ``saturation``).
    Log-softmax in float32, chunked over tokens.
    """
    hidden_states = capture.require("hidden_states")
    input_ids = capture.require("input_ids")
    last = len(hidden_states) - 1
    return [
        MetricValue(
            "logit_lens_cross_entropy",
            readout_cross_entropy(
                h, input_ids, lambda s, k=k: capture.readout_logits(s, normed=k == last)
            ),
            layer=k,
        )
        for k, h in enumerate(hidden_states)
    ]
