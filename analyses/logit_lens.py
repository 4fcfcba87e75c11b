"""Logit lens: how well each layer already predicts the next token."""

from __future__ import annotations

from ckptlab.analyses.capture import Batch
from ckptlab.analyses.readout import MeanNLL
from ckptlab.analyses.registry import MetricValue, Need, NoParams, Reducer, analysis


@analysis(name="logit_lens", version=1, needs={Need.HIDDEN_STATES, Need.READOUT})
class LogitLens(Reducer[NoParams]):
    """Logit-lens cross-entropy per layer (nostalgebraist 2020, "interpreting GPT: the logit
    lens"; Belrose et al. 2023 for its failure modes).

        CE_k = mean_t -ln softmax(post(W_U norm(h^k_t)))[x_{t+1}],   h^k = hidden_states[k]

    for k = 0..L-1 through the model's own final norm and LM head, then ``post``, what the
    family does to the head's output (Granite divides by logits_scaling, Cohere multiplies by
    logit_scale, Gemma 2 soft-caps; ckptlab/architectures.py); at k = L hidden_states[L]
    is already normed, so CE_L is the model's cross-entropy (equal to ``saturation``). The
    pass checks that readout against the model's own logits on its first batch: where it
    disagrees the cell fails with the gap, rather than measure a different model.
    Log-softmax in float32, chunked over tokens; state: a float64 sum and count per layer.
    """

    def __init__(self, params, context):
        super().__init__(params, context)
        self.layers: list[MeanNLL] = []

    def update(self, batch: Batch) -> None:
        hidden_states = batch.require("hidden_states")
        if not self.layers:
            self.layers = [MeanNLL() for _ in hidden_states]
        last = len(hidden_states) - 1
        read = self.context.readout_logits
        for k, (nll, h) in enumerate(zip(self.layers, hidden_states, strict=True)):
            nll.add(h, batch.input_ids, lambda s, k=k: read(s, normed=k == last))

    def finalize(self) -> list[MetricValue]:
        return [
            MetricValue("logit_lens_cross_entropy", nll.mean, layer=k)
            for k, nll in enumerate(self.layers)
        ]


logit_lens = LogitLens.on_capture
