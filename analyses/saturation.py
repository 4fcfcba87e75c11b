"""Saturation: held-out cross-entropy per checkpoint."""

from __future__ import annotations

from ckptlab.analyses.capture import Capture
from ckptlab.analyses.registry import MetricValue, Need, NoParams, analysis


@analysis(name="saturation", version=1, needs={Need.TOKEN_NLL})
def saturation(capture: Capture, params: NoParams) -> list[MetricValue]:
    """Mean token cross-entropy in nats (Godey et al. 2024, "Why do small language models
    underperform? Studying LM saturation via the softmax bottleneck").

        CE = 1 / T * sum_t -ln p(x_t | x_<t)

    over every predicted token of the input set (token-weighted: every sequence has the same
    length, positions 1..n-1 are predicted). Log-softmax is taken in float32 whatever the
    weights' dtype. Saturation is CE rising late in training; read it across steps.
    """
    nll = capture.require("token_nll")  # [seq, pos - 1] float32
    return [
        MetricValue("cross_entropy", float(nll.double().mean())),
        MetricValue("num_predicted_tokens", float(nll.numel())),
    ]
