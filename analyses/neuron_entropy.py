"""Token entropy and semantic entropy of MLP neurons."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from ckptlab.analyses.capture import Batch
from ckptlab.analyses.registry import MetricValue, Need, Reducer, analysis
from ckptlab.lazy import F, torch

NEURON_CHUNK = 512  # neurons processed at once: float64 temporaries stay O(rows * chunk)


def add_mass(mass: torch.Tensor, types: torch.Tensor, activations: torch.Tensor) -> None:
    """mass[v, k] += sum_{t: type(t) = v} relu(a_{t,k}); mass [types, m] float64, types [n]
    (indices into mass' rows), activations [n, m]."""
    for start in range(0, activations.shape[1], NEURON_CHUNK):
        chunk = activations[:, start : start + NEURON_CHUNK].to(torch.float64).clamp_min(0)
        mass[:, start : start + NEURON_CHUNK].index_add_(0, types, chunk)


def entropy_of_mass(mass: torch.Tensor) -> torch.Tensor:
    """Per neuron (column) the entropy in nats of mass / its sum; NaN where the sum is 0."""
    out = []
    for start in range(0, mass.shape[1], NEURON_CHUNK):
        chunk = mass[:, start : start + NEURON_CHUNK]
        total = chunk.sum(0)
        p = chunk / total
        out.append(torch.where(total > 0, -torch.xlogy(p, p).sum(0), torch.nan))
    return torch.cat(out)


def token_entropy(activations: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Per neuron: entropy (nats) of its positive activation mass over token types.

    activations [N, m], token_ids [N] -> [m]; NaN for a neuron with no positive activation.
    p_v = sum_{t: x_t = v} relu(a_t) / sum_t relu(a_t),  H = -sum_v p_v ln p_v.
    """
    types, inverse = torch.unique(token_ids.to(activations.device), return_inverse=True)
    mass = torch.zeros(len(types), activations.shape[1], dtype=torch.float64,
                       device=activations.device)  # fmt: skip
    add_mass(mass, inverse, activations)
    return entropy_of_mass(mass)


class TopK:
    """Each neuron's k largest activations and the tokens at their positions, merged batch by
    batch. Ties go to the earlier position, as in a stable sort of the whole input set, so
    the result does not depend on how the pass was batched."""

    def __init__(self, k: int):
        self.k = k
        self.values: torch.Tensor | None = None  # [<= k, m], descending
        self.tokens: torch.Tensor | None = None  # [<= k, m]

    def add(self, activations: torch.Tensor, token_ids: torch.Tensor) -> None:  # [n, m], [n]
        tokens = token_ids.to(activations.device)[:, None].expand_as(activations)
        values = activations
        if self.values is not None:  # earlier positions first: the stable sort keeps them first
            values = torch.cat([self.values, values])
            tokens = torch.cat([self.tokens, tokens])
        order = torch.sort(values, dim=0, descending=True, stable=True).indices[: self.k]
        self.values = values.gather(0, order)
        self.tokens = tokens.gather(0, order)


def semantic_entropy_of_top(
    top_values: torch.Tensor,  # [k, m] descending
    top_tokens: torch.Tensor,  # [k, m]
    embeddings: torch.Tensor,  # [vocab, d_model]
    bins: int,
) -> torch.Tensor:
    """Per neuron: entropy (bits) of the histogram of cosine similarities between the input
    embeddings of its top positions with positive activation, over pairs of positions holding
    different tokens, in ``bins`` equal bins on [-1, 1]. NaN when a neuron has no such pair."""
    k = top_values.shape[0]
    device = top_values.device
    edges = torch.linspace(-1, 1, bins + 1, dtype=torch.float64, device=device)
    upper = torch.ones(k, k, dtype=torch.bool, device=device).triu(1)
    out = []
    for start in range(0, top_values.shape[1], NEURON_CHUNK):
        active = (top_values[:, start : start + NEURON_CHUNK] > 0).T  # [c, k]
        tokens = top_tokens[:, start : start + NEURON_CHUNK].T.to(embeddings.device)  # [c, k]
        unit = F.normalize(embeddings[tokens].to(torch.float64), dim=-1).to(device)  # [c, k, d]
        tokens = tokens.to(device)
        cos = (unit @ unit.transpose(1, 2)).clamp(-1, 1)  # [c, k, k]
        pairs = (
            upper
            & (tokens[:, :, None] != tokens[:, None, :])
            & active[:, :, None]
            & active[:, None, :]
        )
        which = torch.bucketize(cos, edges[1:-1])  # bin index 0..bins-1
        counts = torch.zeros(len(cos), bins, dtype=torch.float64, device=device)
        counts.scatter_add_(1, which.flatten(1), pairs.flatten(1).to(torch.float64))
        n = counts.sum(1, keepdim=True)
        q = counts / n
        h = -torch.xlogy(q, q).sum(1) / math.log(2)
        out.append(torch.where(n.squeeze(1) > 0, h, torch.nan))
    return torch.cat(out)


def semantic_entropy(
    activations: torch.Tensor,  # [N, m]
    token_ids: torch.Tensor,  # [N]
    embeddings: torch.Tensor,  # [vocab, d_model]
    top_k: int,
    bins: int,
) -> torch.Tensor:
    """Per neuron: semantic entropy of its ``top_k`` most activating positions (see
    semantic_entropy_of_top), over a whole activation matrix at once."""
    top = TopK(min(top_k, activations.shape[0]))
    top.add(activations, token_ids)
    return semantic_entropy_of_top(top.values, top.tokens, embeddings, bins)


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
    version=2,
    needs={Need.MLP_ACTIVATIONS, Need.EMBEDDINGS},
    params=NeuronEntropyParams,
)
class NeuronEntropy(Reducer[NeuronEntropyParams]):
    """Token entropy and semantic entropy of every MLP neuron (after the TopK-LM papers, 2025;
    applies to the MLP neurons of any model).

        p_{k,v} = sum_{t: x_t = v} relu(a_{t,k}) / sum_t relu(a_{t,k})
        token_entropy_k = -sum_v p_{k,v} ln p_{k,v}        (nats; low = lexically selective)
        semantic_entropy_k = -sum_b q_{k,b} log2 q_{k,b}   (bits; low = semantically coherent)

    a = the neuron's firing: the output of the MLP's activation function,
        plain MLP (GPT-NeoX, GPT-2, BLOOM):            a = act(W_in x + b_in)
        gated MLP (SwiGLU / GeGLU: Llama, OLMo, Qwen,
        SmolLM, Gemma):                                a = act(W_gate x)
    where x is the MLP's input; the architecture table (ckptlab/architectures.py) names
    the activation module of each family. Why not the output projection's input, which is a
    in a plain MLP but act(W_gate x) * (W_up x) in a gated one: that product is signed by W_up x,
    and the sign of an up-projection row is arbitrary (negate it and the down-projection's
    column: the same function), so relu() of it keeps an arbitrary half of the signal. act()'s
    output has the nonlinearity's own sign (SiLU and GELU are positive where the neuron is
    "on", bounded below by -0.28 and -0.17), so relu(a) measures the same thing, how strongly
    and where the neuron fires, in both kinds of MLP, and the two are comparable. The up
    projection's W_up x then scales what a firing neuron writes, which this metric leaves out.
    A mixture of experts has no dense neuron vector per token: its cells fail with one line.

    x_t = the token at position t. q_k = histogram (``bins`` equal bins on [-1, 1])
    of cosine similarities between the input embeddings of neuron k's ``top_k`` most activating
    positions, over pairs with positive activation and different tokens. Per layer (layer =
    block index 1..L, the hidden_states index the block writes): mean and 10/50/90% quantiles
    of both, ``dead_neurons`` (no positive activation, excluded), ``neurons``; per-neuron rows
    on request (``per_neuron``). In an MLP whose activation is TopK, the captured vector is the
    sparse latent code, so its latents are measured the same way when the family's table row
    names that module (not yet tested: no TopK checkpoint is available offline). Version 2:
    the activation function's output (version 1 read the output projection's input, which
    differs for gated MLPs).

    State per block: the activation mass of every neuron on every token type of the input set
    ([types, d_mlp] float64; the types are read from the token ids before the pass) and each
    neuron's top-k values and tokens ([top_k, d_mlp]).
    """

    def __init__(self, params, context):
        super().__init__(params, context)
        ids = context.require("input_ids").reshape(-1)
        self.types, self.type_of = torch.unique(ids, return_inverse=True)  # [types], [N]
        self.mass: list[torch.Tensor] = []  # per block
        self.top: list[TopK] = []

    def update(self, batch: Batch) -> None:
        blocks = batch.require("mlp_activations")
        positions = batch.positions
        if not self.mass:
            self.mass = [
                torch.zeros(len(self.types), a.shape[-1], dtype=torch.float64, device=a.device)
                for a in blocks
            ]
            self.top = [TopK(min(self.params.top_k, self.type_of.numel())) for _ in blocks]
        types = self.type_of[positions]
        tokens = batch.input_ids.reshape(-1)
        for mass, top, acts in zip(self.mass, self.top, blocks, strict=True):
            a = acts.reshape(-1, acts.shape[-1])  # [b * pos, d_mlp]
            add_mass(mass, types.to(a.device), a)
            top.add(a, tokens)

    def finalize(self) -> list[MetricValue]:
        embeddings = self.context.require("input_embedding_weight")
        rows = []
        for block, (mass, top) in enumerate(zip(self.mass, self.top, strict=True), start=1):
            tok = entropy_of_mass(mass)
            sem = semantic_entropy_of_top(top.values, top.tokens, embeddings, self.params.bins)
            rows += _summary("token_entropy", tok, block) + _summary("semantic_entropy", sem, block)
            rows.append(MetricValue("dead_neurons", float(tok.isnan().sum()), block))
            rows.append(MetricValue("neurons", float(mass.shape[1]), block))
            if self.params.per_neuron:
                rows += [
                    MetricValue(metric, float(v), block, item=n)
                    for metric, values in (("token_entropy", tok), ("semantic_entropy", sem))
                    for n, v in enumerate(values.tolist())
                    if not math.isnan(v)
                ]
        return rows


neuron_entropy = NeuronEntropy.on_capture
