"""Representation dispersion (1 - within-chunk anisotropy), dispersion gaps and semantic
cluster dispersion."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ckptlab.analyses.anisotropy import UnitSum, mean_pairwise_cosine
from ckptlab.analyses.capture import Batch
from ckptlab.analyses.registry import MetricValue, Need, Reducer, analysis
from ckptlab.lazy import torch


def unit_rows(vectors: torch.Tensor) -> torch.Tensor:
    v = vectors.to(torch.float64)
    return v / v.norm(dim=1, keepdim=True)


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
class Dispersion(Reducer[DispersionParams]):
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

    All distances use sums of unit vectors: O(N d), no N x N matrix. State: per-chunk sums,
    the unit-vector sums of T and T', and one unit-vector sum per cluster (the clusters are
    found from the input set's token ids before the pass).
    """

    def __init__(self, params, context):
        super().__init__(params, context)
        ids = context.require("input_ids")
        self.clusters = continuation_clusters(ids, params.cluster_ngram)
        self.cluster_of = torch.full((ids.numel(),), -1, dtype=torch.int64)  # flat position
        for c, members in enumerate(self.clusters):
            self.cluster_of[members] = c
        self.cluster_sums: torch.Tensor | None = None  # [clusters, d] float64
        self.chunk_sum: dict[int, float] = {}  # layer -> sum over chunks of their dispersion
        self.chunks = 0
        self.task, self.reference = UnitSum(), UnitSum()
        self.gap = bool(params.task_token_ids and params.reference_token_ids)

    def update(self, batch: Batch) -> None:
        hidden_states = batch.require("hidden_states")
        last = len(hidden_states) - 1
        layers = range(len(hidden_states)) if self.params.layers == "all" else [last]
        for k in layers:
            per_chunk = [1 - mean_pairwise_cosine(chunk) for chunk in hidden_states[k]]
            self.chunk_sum[k] = self.chunk_sum.get(k, 0.0) + sum(per_chunk)
        self.chunks += hidden_states[last].shape[0]

        flat = hidden_states[last].reshape(-1, hidden_states[last].shape[-1])  # [b * pos, d]
        ids = batch.input_ids.reshape(-1).to(flat.device)
        if self.gap:
            for sums, token_ids in (
                (self.task, self.params.task_token_ids),
                (self.reference, self.params.reference_token_ids),
            ):
                chosen = flat[torch.isin(ids, torch.tensor(token_ids, device=ids.device))]
                if len(chosen):
                    sums.add(chosen)
        if len(self.clusters) >= 2:
            cluster = self.cluster_of[batch.positions].to(flat.device)  # [b * pos]
            member = cluster >= 0
            if self.cluster_sums is None:
                shape = (len(self.clusters), flat.shape[-1])
                self.cluster_sums = torch.zeros(shape, dtype=torch.float64, device=flat.device)
            self.cluster_sums.index_add_(0, cluster[member], unit_rows(flat[member]))

    def finalize(self) -> list[MetricValue]:
        last = max(self.chunk_sum)
        rows = [
            MetricValue("dispersion", total / self.chunks, layer=k)
            for k, total in sorted(self.chunk_sum.items())
        ]
        if self.gap and self.task.count >= 2 and self.reference.count >= 1:
            within = 1 - self.task.mean_pairwise_cosine()
            between = float(
                1
                - self.task.total.dot(self.reference.total)
                / (self.task.count * self.reference.count)
            )
            rows += [
                MetricValue("dispersion_within_task", within, layer=last),
                MetricValue("dispersion_between", between, layer=last),
                MetricValue("dispersion_gap", within + between, layer=last),
            ]
        rows.append(MetricValue("num_clusters", float(len(self.clusters)), layer=last))
        if len(self.clusters) >= 2:
            sums = self.cluster_sums  # [clusters, d]
            sizes = torch.tensor([len(c) for c in self.clusters], dtype=torch.float64)
            squared = (sums * sums).sum(1).cpu()  # ||s_c||^2
            within = 1 - (squared - sizes) / (sizes * (sizes - 1))
            total = sums.sum(0)
            # Pairs in different clusters: all ordered pairs minus those inside one cluster.
            cross_dot = total.dot(total).cpu() - squared.sum()
            cross_pairs = sizes.sum() ** 2 - (sizes * sizes).sum()
            rows += [
                MetricValue("cluster_within", float(within.mean()), layer=last),
                MetricValue("cluster_between", float(1 - cross_dot / cross_pairs), layer=last),
            ]
        return rows


dispersion = Dispersion.on_capture
