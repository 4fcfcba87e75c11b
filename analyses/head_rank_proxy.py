"""A training-free proxy for rank-limited LM heads."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from ckptlab.analyses.capture import Batch
from ckptlab.analyses.readout import MeanNLL
from ckptlab.analyses.registry import MetricValue, Need, Reducer, analysis
from ckptlab.lazy import torch


class HeadRankParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    ranks: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = [1, 2, 4, 8, 16, 32]


@analysis(
    name="head_rank_proxy",
    version=1,
    needs={Need.HIDDEN_STATES, Need.READOUT},
    params=HeadRankParams,
)
class HeadRankProxy(Reducer[HeadRankParams]):
    """Cross-entropy with the LM head replaced by its best rank-r approximation — a
    training-free PROXY for the rank-limited heads W = A B of Godey et al. 2024 ("Why do small
    language models underperform?"), which were trained on frozen features.

        W = U S V^T (SVD, float64),  W_r = U_r S_r V_r^T  (Eckart-Young best rank r)
        CE_r = mean_t -ln softmax(post(W_r h_t))[x_{t+1}],  h = hidden_states[L] (after the norm)

    post = what the model's family does to the head's output before calling it logits
    (Granite divides by logits_scaling, Cohere multiplies by logit_scale, Gemma 2 soft-caps;
    see ckptlab/architectures.py), so CE_full is the model's own cross-entropy.

    Metric ``cross_entropy_rank_<r>`` for each requested r (capped at min(V, d), where W_r = W)
    and ``cross_entropy_full_rank``. Logits are computed as (h V_r S_r) U_r^T, [tokens, r] then
    [tokens, V], chunked over tokens. The SVD is taken once, when the analysis starts.
    """

    def __init__(self, params, context):
        super().__init__(params, context)
        weight = context.require("lm_head_weight").to(torch.float64)  # [V, d_model]
        u, sigma, vh = torch.linalg.svd(weight, full_matrices=False)
        self.factors = {}  # r -> (down [d_model, r], up [r, V]) in float64
        for r in sorted(set(params.ranks)):
            r_eff = min(r, sigma.numel())
            self.factors[r] = (vh[:r_eff].T * sigma[:r_eff], u[:, :r_eff].T)
        self.ranked = {r: MeanNLL() for r in self.factors}
        self.full = MeanNLL()

    def update(self, batch: Batch) -> None:
        hidden = batch.require("hidden_states")[-1]  # [b, pos, d_model], normed
        for r, (down, up) in self.factors.items():
            down, up = down.to(hidden.dtype), up.to(hidden.dtype)
            self.ranked[r].add(
                hidden,
                batch.input_ids,
                # the family's post-processing of the head's output (Granite's scaling, ...)
                lambda s, down=down, up=up: self.context.finish_logits(s @ down @ up),
            )
        self.full.add(hidden, batch.input_ids, lambda s: self.context.readout_logits(s, True))

    def finalize(self) -> list[MetricValue]:
        rows = [MetricValue(f"cross_entropy_rank_{r}", nll.mean) for r, nll in self.ranked.items()]
        rows.append(MetricValue("cross_entropy_full_rank", self.full.mean))
        return rows


head_rank_proxy = HeadRankProxy.on_capture
