"""Saturation: held-out cross-entropy per checkpoint."""

from __future__ import annotations

from ckptlab.analyses.capture import Batch
from ckptlab.analyses.registry import MetricValue, Need, NoParams, Reducer, analysis


@analysis(name="saturation", version=1, needs={Need.TOKEN_NLL})
class Saturation(Reducer[NoParams]):
    """Mean token cross-entropy in nats (Godey et al. 2024, "Why do small language models
    underperform? Studying LM saturation via the softmax bottleneck").

        CE = 1 / T * sum_t -ln p(x_t | x_<t)

    over every predicted token of the input set (token-weighted: every sequence has the same
    length, positions 1..n-1 are predicted). Log-softmax is taken in float32 whatever the
    weights' dtype. Saturation is CE rising late in training; read it across steps.
    State: the float64 sum of the NLL and the token count.
    """

    def __init__(self, params, context):
        super().__init__(params, context)
        self.total = 0.0
        self.count = 0

    def update(self, batch: Batch) -> None:
        nll = batch.require("token_nll")  # [b, pos - 1] float32
        self.total += float(nll.double().sum())
        self.count += nll.numel()

    def finalize(self) -> list[MetricValue]:
        return [
            MetricValue("cross_entropy", self.total / self.count),
            MetricValue("num_predicted_tokens", float(self.count)),
        ]


saturation = Saturation.on_capture
