"""Token entropy and semantic entropy of MLP neurons."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ckptlab.analyses.capture import Capture
from ckptlab.analyses.registry import MetricValue, Need, analysis

NEURON_CHUNK = 512  # neurons whose top-k embeddings are held at once: [k, chunk, d_model]


def token_entropy(activations: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Per neuron: entropy (nats) of its positive activation mass over token types.

    activations [N, m], token_ids [N] -> [m]; NaN for a neuron with no positive activation.
    p_v = sum_{t: x_t = v} relu(a_t) / sum_t relu(a_t),  H = -sum_v p_v ln p_v.
    Neurons are processed NEURON_CHUNK at a time: memory O((N + types) * chunk), float64.
    """
    types, inverse = torch.unique(token_ids.to(activations.device), return_inverse=True)
    out = []
    for start in range(0, activations.shape[1], NEURON_CHUNK):
        positive = activations[:, start : start + NEURON_CHUNK].to(torch.float64).clamp_min(0)
        mass = positive.new_zeros(len(types), positive.shape[1])
        mass.index_add_(0, inverse, positive)  # [types, chunk]
        total = mass.sum(0)
        p = mass / total
        h = -torch.xlogy(p, p).sum(0)
        out.append(torch.where(total > 0, h, torch.nan))
    return torch.cat(out)


def semantic_entropy(
    activations: torch.Tensor,  # [N, m]
    token_ids: torch.Tensor,  # [N]
    embeddings: torch.Tensor,  # [vocab, d_model]
    top_k: int,
    bins: int,
) -> torch.Tensor:
    """Per neuron: entropy (bits) of the histogram of cosine similarities between the input
    embeddings of its top-k activating positions (positive activations only), over pairs of
    positions holding different tokens, in ``bins`` equal bins on [-1, 1]. NaN when a neuron
    has no such pair."""
    k = min(top_k, activations.shape[0])
    top = activations.topk(k, dim=0)  # values, indices: [k, m]
    edges = torch.linspace(-1, 1, bins + 1, dtype=torch.float64, device=activations.device)
    upper = torch.ones(k, k, dtype=torch.bool, device=activations.device).triu(1)
    out = []
    for start in range(0, activations.shape[1], NEURON_CHUNK):
        idx = top.indices[:, start : start + NEURON_CHUNK]  # [k, c]
        active = (top.values[:, start : start + NEURON_CHUNK] > 0).T  # [c, k]
        tokens = token_ids.to(idx.device)[idx].T  # [c, k]
        unit = F.normalize(embeddings[tokens].to(torch.float64), dim=-1)  # [c, k, d]
        cos = (unit @ unit.transpose(1, 2)).clamp(-1, 1)  # [c, k, k]
        pairs = (
            upper
            & (tokens[:, :, None] != tokens[:, None, :])
            & active[:, :, None]
            & active[:, None, :]
        )
        which = torch.bucketize(cos, edges[1:-1])  # bin index 0..bins-1
        counts = torch.zeros(len(cos), bins, dtype=torch.float64, device=cos.device)
        counts.scatter_add_(1, which.flatten(1), pairs.flatten(1).to(torch.float64))
        n = counts.sum(1, keepdim=True)
        q = counts / n
        h = -torch.xlogy(q, q).sum(1) / math.log(2)
        out.append(torch.where(n.squeeze(1) > 0, h, torch.nan))
    return torch.cat(out)


class NeuronEntropyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    top_k: int = Field(20, ge=2)  # top-activating positions per neuron for semantic entropy
    bins: int = Field(10, ge=2)  # similarity histogram bins on [-1, 1]
    per_neuron: bool = False  # also one row per neuron (item = neuron index)


def _summary(name: str, values: torch.Tensor, layer: int) -> list[MetricValue]:
    defined = values[~values.isnan()]
    if defined.numel() == 0:
        return []
    levels = torch.tensor([0.1, 0.5, 0.9], dtype=defined.dtype, device=defined.device)
    quantiles = torch.quantile(defined, levels)
    return [
        MetricValue(f"{name}_mean", float(defined.mean()), layer),
        MetricValue(f"{name}_p10", float(quantiles[0]), layer),
        MetricValue(f"{name}_p50", float(quantiles[1]), layer),
        MetricValue(f"{name}_p90", float(quantiles[2]), layer),
    ]


@analysis(
    name="neuron_entropy",
    version=1,
    needs={Need.MLP_ACTIVATIONS, Need.EMBEDDINGS},
    params=NeuronEntropyParams,
)
def neuron_entropy(capture: Capture, params: NeuronEntropyParams) -> list[MetricValue]:
    """Token entropy and semantic entropy of every MLP neuron (after the TopK-LM papers, 2025;
    applies to the MLP neurons of any model).

        p_{k,v} = sum_{t: x_t = v} relu(a_{t,k}) / sum_t relu(a_{t,k})
        token_entropy_k = -sum_v p_{k,v} ln p_{k,v}        (nats; low = lexically selective)
        semantic_entropy_k = -sum_b q_{k,b} log2 q_{k,b}   (bits; low = semantically coherent)

    a = the MLP's neuron activations (the input of its output projection, so gated MLPs are
    covered); x_t = the token at position t. q_k = histogram (``bins`` equal bins on [-1, 1])
    of cosine similarities between the input embeddings of neuron k's ``top_k`` most activating
    positions, over pairs with positive activation and different tokens. Per layer (layer =
    block index 1..L, the hidden_states index the block writes): mean and 10/50/90% quantiles
    of both, ``dead_neurons`` (no positive activation, excluded), ``neurons``; per-neuron rows
    on request (``per_neuron``). In an MLP whose activation is TopK, the captured vector is the
    sparse latent code, so its latents are measured the same way when the model uses one of the
    recognised MLP layouts (not yet tested: no TopK checkpoint is available offline).
    """
    ids = capture.require("input_ids").reshape(-1)
    embeddings = capture.require("input_embedding_weight")
    rows = []
    for block, acts in enumerate(capture.require("mlp_activations"), start=1):
        a = acts.reshape(-1, acts.shape[-1])  # [N, d_mlp]
        tok = token_entropy(a, ids)
        sem = semantic_entropy(a, ids, embeddings, params.top_k, params.bins)
        rows += _summary("token_entropy", tok, block) + _summary("semantic_entropy", sem, block)
        rows.append(MetricValue("dead_neurons", float(tok.isnan().sum()), block))
        rows.append(MetricValue("neurons", float(a.shape[1]), block))
        if params.per_neuron:
            rows += [
                MetricValue(metric, float(v), block, item=n)
                for metric, values in (("token_entropy", tok), ("semantic_entropy", sem))
                for n, v in enumerate(values.tolist())
                if not math.isnan(v)
            ]
    return rows
