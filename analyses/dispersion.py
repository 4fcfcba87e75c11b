"""Representation dispersion (1 - within-chunk anisotropy), dispersion gaps and semantic
cluster dispersion."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ckptlab.analyses.anisotropy import mean_pairwise_cosine
from ckptlab.analyses.capture import Capture
from ckptlab.analyses.registry import MetricValue, Need, analysis


def unit_rows(vectors: torch.Tensor) -> torch.Tensor:
    v = vectors.to(torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def mean_cosine_distance_between(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 - mean over all (i in A, j in B) of cos(a_i, b_j) = 1 - (s_A . s_B) / (|A| |B|)."""
    return float(1 - unit_rows(a).sum(0).dot(unit_rows(b).sum(0)) / (len(a) * len(b)))


def continuation_clusters(input_ids: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Positions (flat indices into [seq * pos]) grouped by their next-n-token continuation
    x_{t+1..t+n}, for clusters of at least two positions."""
    groups: dict[tuple[int, ...], list[int]] = {}
    ids = input_ids.tolist()
    width = input_ids.shape[1]
    for s, row in enumerate(ids):
        for t in range(width - n):
            groups.setdefault(tuple(row[t + 1 : t + 1 + n]), []).append(s * width + t)
    return [torch.tensor(members) for members in groups.values() if len(members) >= 2]


class DispersionParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    layers: Literal["last", "all"] = "last"
    # Dispersion gap: token ids of the task set T and the reference set T'.
    task_token_ids: list[int] = []
    reference_token_ids: list[int] = []
    # Semantic clusters: positions sharing the same next-n-token continuation.
    cluster_ngram: int = Field(10, ge=1)


@analysis(name="dispersion", version=1, needs={Need.HIDDEN_STATES}, params=DispersionParams)
def dispersion(capture: Capture, params: DispersionParams) -> list[MetricValue]:
    """Representation dispersion (Li et al. 2026, "On the Predictive Power of Representation
    Dispersion in Language Models", ICLR).

        dispersion = mean over chunks c of (1 - mean_{i<j in c} cos(h_i, h_j))

    A chunk is one sequence of the input set (the paper uses 512-token chunks: set
    seq_len: 512); h = hidden_states[L] (after the final norm) or every layer with
    ``layers: all``. Also, at the last layer:

    - gap, when token ids are given: G = within(T) + between(T, T'), within(T) = mean pairwise
      cosine distance among positions holding a token of T, between = mean cosine distance
      between T's and T''s positions (``dispersion_gap``, ``dispersion_within_task``,
      ``dispersion_between``);
    - semantic clusters: positions t whose next ``cluster_ngram`` tokens are identical form a
      cluster; ``cluster_within`` = mean over clusters of their within dispersion,
      ``cluster_between`` = mean cosine distance over pairs in different clusters,
      ``num_clusters`` (0 and no distances when no continuation repeats).

    All distances use sums of unit vectors: O(N d), no N x N matrix.
    """
    hidden_states = capture.require("hidden_states")
    last = len(hidden_states) - 1
    layers = range(len(hidden_states)) if params.layers == "all" else [last]
    rows = []
    for k in layers:
        h = hidden_states[k]  # [seq, pos, d]
        per_chunk = [1 - mean_pairwise_cosine(chunk) for chunk in h]
        rows.append(MetricValue("dispersion", sum(per_chunk) / len(per_chunk), layer=k))

    flat = hidden_states[last].reshape(-1, hidden_states[last].shape[-1])  # [seq * pos, d]
    ids = capture.require("input_ids").reshape(-1).to(flat.device)
    if params.task_token_ids and params.reference_token_ids:
        task = flat[torch.isin(ids, torch.tensor(params.task_token_ids, device=ids.device))]
        ref = flat[torch.isin(ids, torch.tensor(params.reference_token_ids, device=ids.device))]
        if len(task) >= 2 and len(ref) >= 1:
            within = 1 - mean_pairwise_cosine(task)
            between = mean_cosine_distance_between(task, ref)
            rows += [
                MetricValue("dispersion_within_task", within, layer=last),
                MetricValue("dispersion_between", between, layer=last),
                MetricValue("dispersion_gap", within + between, layer=last),
            ]

    clusters = continuation_clusters(capture.require("input_ids"), params.cluster_ngram)
    rows.append(MetricValue("num_clusters", float(len(clusters)), layer=last))
    if len(clusters) >= 2:
        sums = [unit_rows(flat[c.to(flat.device)]).sum(0) for c in clusters]
        sizes = [len(c) for c in clusters]
        within = [1 - mean_pairwise_cosine(flat[c.to(flat.device)]) for c in clusters]
        total = torch.stack(sums).sum(0)
        # Pairs in different clusters: all ordered pairs minus those inside one cluster.
        cross_dot = total.dot(total) - sum(s.dot(s) for s in sums)
        cross_pairs = sum(sizes) ** 2 - sum(n * n for n in sizes)
        rows += [
            MetricValue("cluster_within", sum(within) / len(within), layer=last),
            MetricValue("cluster_between", float(1 - cross_dot / cross_pairs), layer=last),
        ]
    return rows
