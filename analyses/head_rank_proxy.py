"""A training-free proxy for rank-limited LM heads."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field

from ckptlab.analyses.capture import Capture
from ckptlab.analyses.readout import readout_cross_entropy
from ckptlab.analyses.registry import MetricValue, Need, analysis


class HeadRankParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    ranks: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = [1, 2, 4, 8, 16, 32]


@analysis(
    name="head_rank_proxy",
    version=1,
    needs={Need.HIDDEN_STATES, Need.READOUT},
    params=HeadRankParams,
)
def head_rank_proxy(capture: Capture, params: HeadRankParams) -> list[MetricValue]:
    """Cross-entropy with the LM head replaced by its best rank-r approximation — a
    training-free PROXY for the rank-limited heads W = A B of Godey et al. 2024 ("Why do small
    language models underperform?"), which were trained on frozen features.

        W = U S V^T (SVD, float64),  W_r = U_r S_r V_r^T  (Eckart-Young best rank r)
        CE_r = mean_t -ln softmax(W_r h_t)[x_{t+1}],   h = hidden_states[L] (after final norm)

    Metric ``cross_entropy_rank_<r>`` for each requested r (capped at min(V, d), where W_r = W)
    and ``cross_entropy_full_rank``. Logits are computed as (h V_r S_r) U_r^T, [tokens, r] then
    [tokens, V], chunked over tokens.
    """
    hidden = capture.require("hidden_states")[-1]  # [seq, pos, d_model], normed
    input_ids = capture.require("input_ids")
    weight = capture.require("lm_head_weight").to(torch.float64)  # [V, d_model]
    u, sigma, vh = torch.linalg.svd(weight, full_matrices=False)
    rows = []
    for r in sorted(set(params.ranks)):
        r_eff = min(r, sigma.numel())
        down = (vh[:r_eff].T * sigma[:r_eff]).to(hidden.dtype)  # [d_model, r]
        up = u[:, :r_eff].T.to(hidden.dtype)  # [r, V]
        ce = readout_cross_entropy(hidden, input_ids, lambda s, down=down, up=up: s @ down @ up)
        rows.append(MetricValue(f"cross_entropy_rank_{r}", ce))
    full = readout_cross_entropy(hidden, input_ids, lambda s: capture.readout_logits(s, True))
    rows.append(MetricValue("cross_entropy_full_rank", full))
    return rows
