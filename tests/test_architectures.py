"""Architectures by declaration (ckptlab/architectures.py), on a tiny RANDOM checkpoint of
every family in the table: built with transformers' own config classes, saved, reloaded through
ckptlab.hub.load_model and run through the worker (run_unit), every per-checkpoint analysis
either equals an independent float64 recomputation from transformers' own outputs, or gives its
documented one-line refusal.

The references restate what each family does in this file's own words (where its final norm and
blocks are, how its MLP fires, what it does to the head's output), read the weights through the
model's own modules, and compute in float64. Not run here: ``lm_eval`` and ``icl`` (their own
prompts through the model's own forward, no table involved) and the cross-checkpoint ``cka``
(it needs a reference sketch from another checkpoint; it reads hidden states only).
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_neuron_entropy import naive_semantic_entropy
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from ckptlab import architectures
from ckptlab.analyses.registry import Need, get_analysis, registered_analyses
from ckptlab.architectures import TABLE, table_is_known
from ckptlab.hub import content_commit_id, load_model
from ckptlab.orchestrator.checkpoints import CheckpointRef
from ckptlab.orchestrator.forward import capture_forward
from ckptlab.orchestrator.plan import Cell
from ckptlab.orchestrator.unit import UnitTask
from ckptlab.orchestrator.worker import run_unit

from reference import gram_mean_pairwise_cosine, naive_linearity, naive_singular_entropy

VOCAB, SEQ, POS, BATCH = 256, 4, 16, 2  # two batches: the self-check runs on the first only
TOKENS = np.random.default_rng(0).integers(3, VOCAB, size=(SEQ, POS))

# The families issue 21 names; the table may hold more (each is tested below).
REQUIRED = {"gpt_neox", "llama", "smollm3", "gpt2", "olmo", "olmo2", "olmo3", "qwen2", "olmoe"}
REQUIRED |= {"bloom", "granite", "cohere", "gemma2"}

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
    pad_token_id=0,  # the defaults (128004, 50256, ...) are outside a 256-token vocabulary
    bos_token_id=1,
    eos_token_id=2,
    initializer_range=0.2,  # logits of a few nats, so a missed post-processing shows
)
EXTRA = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "bloom": dict(n_layer=2, n_head=4),
    "granite": dict(logits_scaling=4.0, embedding_multiplier=2.0),
    "granitemoe": dict(
        logits_scaling=4.0, embedding_multiplier=2.0, num_local_experts=4, num_experts_per_tok=2
    ),
    # Gemma 2's default cap (30) is invisible on logits of a few nats: a cap that bites.
    "gemma2": dict(final_logit_softcapping=2.0),
    "gemma3_text": dict(final_logit_softcapping=2.0),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
}
MOE = {"olmoe", "qwen3_moe", "mixtral", "granitemoe"}
# Variants of a family: the name a test is parametrized with -> (model_type, config changes).
# Llama's head is untied by default; SmolLM2 and Llama-3.2-1B tie it.
VARIANTS = {"llama-tied": ("llama", {"tie_word_embeddings": True})}

# This file's own account of the families (not read from the table).
FINAL_NORM = {"gpt_neox": "gpt_neox.final_layer_norm", "gpt2": "transformer.ln_f"}
FINAL_NORM["bloom"] = "transformer.ln_f"
BLOCKS = {"gpt_neox": "gpt_neox.layers", "gpt2": "transformer.h", "bloom": "transformer.h"}


def own_post(model_type: str, config, z: torch.Tensor) -> torch.Tensor:
    """What each family's forward does to lm_head(h), restated from its modeling code."""
    if model_type in ("granite", "granitemoe"):
        return z / config.logits_scaling
    if model_type in ("cohere", "cohere2"):
        return z * config.logit_scale
    if model_type in ("gemma2", "gemma3_text") and config.final_logit_softcapping:
        cap = config.final_logit_softcapping
        return torch.tanh(z / cap) * cap
    return z


def own_firing(model_type: str, mlp, x: torch.Tensor) -> torch.Tensor:
    """The MLP's activation function output for inputs x [N, d], float64, from its weights."""

    def linear(layer):
        bias = None if layer.bias is None else layer.bias.double()
        return F.linear(x, layer.weight.double(), bias)

    if model_type == "gpt_neox":
        return mlp.act(linear(mlp.dense_h_to_4h))
    if model_type == "gpt2":  # Conv1D: weight [d, m]
        return mlp.act(x @ mlp.c_fc.weight.double() + mlp.c_fc.bias.double())
    if model_type == "bloom":
        return mlp.gelu_impl(linear(mlp.dense_h_to_4h))
    if model_type == "starcoder2":
        return mlp.act(linear(mlp.c_fc))
    if model_type == "phi3":  # gate and up in one matrix, the gate first
        return mlp.activation_fn(linear(mlp.gate_up_proj)[:, : mlp.down_proj.in_features])
    return mlp.act_fn(linear(mlp.gate_proj))  # gated: act(W_gate x)


ANALYSES = {
    "saturation": {},
    "anisotropy": {},
    "singular_entropy": {},
    "logit_lens": {},
    "head_rank_proxy": {"ranks": [1, 4, 64]},
    "dispersion": {},
    "intrinsic_dimension": {},
    "linearity": {},
    "neuron_entropy": {"top_k": 8, "bins": 5, "per_neuron": True},
    "block_ablation": {},
}
NOT_HERE = {"lm_eval", "icl", "cka"}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A word-level tokenizer with VOCAB tokens (len(tokenizer) == the model's vocabulary)."""
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer_dir):
    """model_type -> a local checkpoint root holding revision "main" (built once)."""
    built: dict[str, Path] = {}

    def build(name: str) -> Path:
        if name not in built:
            model_type, changes = VARIANTS.get(name, (name, {}))
            root = tmp_path_factory.mktemp(name)
            extra = EXTRA.get(model_type, {}) | changes
            config = AutoConfig.for_model(model_type, **COMMON, **extra)
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(config).save_pretrained(root / "main")
            for path in tokenizer_dir.iterdir():
                shutil.copy(path, root / "main" / path.name)
            built[name] = root
        return built[name]

    return build


def run(root: Path, names=tuple(ANALYSES)):
    """run_unit on the checkpoint: ({analysis: {(metric, layer, item): value}},
    {analysis: error}, the UnitResult)."""
    cells = []
    for name in names:
        definition = get_analysis(name)
        input_set = "set" if definition.needs_forward_pass else None
        params = json.dumps(ANALYSES[name])
        cells.append(Cell(f"k-{name}", name, name, definition.version, params, "h", input_set,
                          input_set and "set-id"))  # fmt: skip
    task = UnitTask(
        checkpoint=CheckpointRef(str(root), "main", 0, "local", local_only=True),
        commit=content_commit_id(root / "main"),
        cells=cells,
        token_ids={"set": TOKENS},
        hub_dir=None,
        dtype="float32",
        batch_size=BATCH,
        trust_remote_code=False,
        allow_pickle=False,
    )
    result = run_unit(task, "cpu")
    rows: dict[str, dict] = {}
    for m in result.metrics:
        rows.setdefault(m.cell_key.removeprefix("k-"), {})[(m.metric, m.layer, m.item)] = m.value
    failures = {f.analysis: f.error for f in result.failures}
    return rows, failures, result


class Reference:
    """One float64 view of a plain transformers forward over TOKENS: logits, hidden states, the
    final norm's input and each block's MLP input, captured by this file's own hooks."""

    def __init__(self, model, model_type: str):
        self.model, self.model_type = model, model_type
        self.ids = torch.from_numpy(TOKENS)
        self.norm = model.get_submodule(FINAL_NORM.get(model_type, "model.norm"))
        self.blocks = model.get_submodule(BLOCKS.get(model_type, "model.layers"))
        seen: dict = {"mlp": {}}

        def keep(where: dict, key):
            def hook(_module, args) -> None:  # returns None: the call's arguments stay
                where.setdefault(key, args[0])

            return hook

        hooks = [self.norm.register_forward_pre_hook(keep(seen, "pre"))]
        if model_type not in MOE:
            for k, block in enumerate(self.blocks):
                hooks.append(block.mlp.register_forward_pre_hook(keep(seen["mlp"], k)))
        with torch.no_grad():
            out = model(input_ids=self.ids, output_hidden_states=True)
        for hook in hooks:
            hook.remove()
        self.logits = out.logits.double()  # [seq, pos, vocab]
        self.hidden = [h.double() for h in out.hidden_states]  # (L+1) x [seq, pos, d]
        self.pre = seen["pre"].double()
        self.mlp_inputs = [seen["mlp"][k].double() for k in sorted(seen["mlp"])]
        self.head = model.get_output_embeddings().weight.detach().double()  # [vocab, d]

    def cross_entropy(self, logits: torch.Tensor) -> float:
        """Mean -ln softmax(logits[t])[x_{t+1}], float64."""
        log_probs = torch.log_softmax(logits[:, :-1].double(), dim=-1)
        return float(-log_probs.gather(-1, self.ids[:, 1:, None]).mean())

    def post(self, z: torch.Tensor) -> torch.Tensor:
        return own_post(self.model_type, self.model.config, z)

    def readout(self, h: torch.Tensor, normed: bool) -> torch.Tensor:
        if not normed:
            with torch.no_grad():
                h = copy.deepcopy(self.norm).double()(h)
        return self.post(h @ self.head.T)


def twonn(points: np.ndarray, fit_fraction: float = 0.9) -> float:
    """TwoNN from the full distance matrix (Facco et al. 2017), float64."""
    d = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    r = np.sort(d, axis=1)
    mu = np.sort(r[:, 1] / r[:, 0])
    n = len(mu)
    keep = max(1, int(n * fit_fraction))
    x = np.log(mu[:keep])
    y = -np.log(1 - np.arange(1, n + 1)[:keep] / n)
    return float((x * y).sum() / (x * x).sum())


def token_entropy(a: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per neuron: entropy of relu(a)'s mass over token types, NaN for a dead neuron."""
    mass = np.stack([np.maximum(a[ids == v], 0).sum(0) for v in np.unique(ids)])  # [types, m]
    total = mass.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = mass / total
        h = -np.where(p > 0, p * np.log(p), 0).sum(0)
    return np.where(total > 0, h, np.nan)


def ridge_fit(x: np.ndarray, y: np.ndarray, ridge: float = 1e-8) -> np.ndarray:
    x1 = np.hstack([x, np.ones((x.shape[0], 1))])
    gram = x1.T @ x1
    return np.linalg.solve(gram + ridge * np.mean(np.diag(gram)) * np.eye(len(gram)), x1.T @ y)


class Swap(torch.nn.Module):
    """A block whose hidden-state output is replaced by fn(its input)."""

    def __init__(self, block, fn):
        super().__init__()
        self.block, self.fn = block, fn

    def forward(self, hidden_states, *args, **kwargs):
        out = self.block(hidden_states, *args, **kwargs)
        new = self.fn(hidden_states)
        return (new, *out[1:]) if isinstance(out, tuple) else new


def test_the_table_covers_the_issue_and_every_shipped_analysis_is_here():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    assert set(TABLE) >= REQUIRED
    # The plan skips transformers' own check for these (orchestrator/plan.remote_code_needed)
    # when transformers is at least TABLE_KNOWN_SINCE.
    assert table_is_known()
    assert set(TABLE) <= set(CONFIG_MAPPING_NAMES)
    shipped = {name for name, d in registered_analyses().items() if d.shipped}
    assert shipped - NOT_HERE == set(ANALYSES)


@pytest.mark.parametrize("name", [*sorted(TABLE), *VARIANTS])
def test_every_analysis_equals_a_float64_recomputation(tiny, name):
    root = tiny(name)
    model_type = VARIANTS.get(name, (name,))[0]
    rows, failures, result = run(root)
    model = load_model(root / "main", "float32", "cpu")
    ref = Reference(model, model_type)
    L = len(ref.hidden) - 1
    flat = [h.reshape(-1, h.shape[-1]) for h in ref.hidden]  # (L+1) x [N, d]

    # The one refusal a family may give: a mixture of experts has no dense neurons.
    expected = {}
    if model_type in MOE:
        expected["neuron_entropy"] = (
            f"neuron_entropy: {model_type}'s MLP is a mixture of experts; neuron activations "
            "are not captured"
        )
    assert failures == expected
    assert result.model_type == model_type
    embedding = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight.data_ptr() == embedding.data_ptr()
    assert result.tied_head == tied == model.config.tie_word_embeddings
    if name == "llama-tied":
        assert tied

    # saturation and the model's own logits; where a family post-processes its logits, the
    # head alone is measurably different (what ckptlab computed before the table).
    own_ce = ref.cross_entropy(ref.logits)
    assert rows["saturation"][("cross_entropy", None, None)] == pytest.approx(own_ce, abs=1e-5)
    head_only = ref.cross_entropy(ref.hidden[-1] @ ref.head.T)
    if TABLE[model_type].logits == "none":
        assert head_only == pytest.approx(own_ce, abs=1e-6)
    else:
        assert abs(head_only - own_ce) > 0.01

    for k in range(L + 1):
        assert rows["anisotropy"][("anisotropy", k, None)] == pytest.approx(
            gram_mean_pairwise_cosine(flat[k].numpy()), abs=1e-6
        )
    pre = ref.pre.reshape(-1, ref.pre.shape[-1]).numpy()
    assert rows["anisotropy"][("anisotropy_pre_final_norm", L, None)] == pytest.approx(
        gram_mean_pairwise_cosine(pre), abs=1e-6
    )

    kl, h = naive_singular_entropy(ref.head[:VOCAB].numpy())
    assert rows["singular_entropy"][("singular_entropy", None, None)] == pytest.approx(kl, 1e-9)
    assert rows["singular_entropy"][("spectral_entropy", None, None)] == pytest.approx(h, 1e-9)

    for k in range(L + 1):
        expected_ce = ref.cross_entropy(ref.readout(ref.hidden[k], normed=k == L))
        got = rows["logit_lens"][("logit_lens_cross_entropy", k, None)]
        assert got == pytest.approx(expected_ce, rel=1e-5), k
    assert rows["logit_lens"][("logit_lens_cross_entropy", L, None)] == pytest.approx(
        own_ce, rel=1e-5
    )

    u, s, vh = np.linalg.svd(ref.head.numpy(), full_matrices=False)
    for r in (1, 4, 64):
        w_r = torch.from_numpy((u[:, :r] * s[:r]) @ vh[:r])
        expected_ce = ref.cross_entropy(ref.post(ref.hidden[-1] @ w_r.T))
        got = rows["head_rank_proxy"][(f"cross_entropy_rank_{r}", None, None)]
        assert got == pytest.approx(expected_ce, rel=1e-5), r
    got = rows["head_rank_proxy"][("cross_entropy_full_rank", None, None)]
    assert got == pytest.approx(own_ce, rel=1e-5)

    dispersion = np.mean([1 - gram_mean_pairwise_cosine(seq.numpy()) for seq in ref.hidden[-1]])
    assert rows["dispersion"][("dispersion", L, None)] == pytest.approx(dispersion, abs=1e-6)

    for k in range(L + 1):
        points = np.unique(flat[k].float().double().numpy(), axis=0)
        got = rows["intrinsic_dimension"][("intrinsic_dimension", k, None)]
        assert got == pytest.approx(twonn(points), rel=1e-6), k
        assert rows["intrinsic_dimension"][("twonn_points", k, None)] == len(points)

    for k in range(L):
        x, y = flat[k].numpy(), flat[k + 1].numpy()
        got = rows["linearity"]
        assert got[("linearity", k, None)] == pytest.approx(naive_linearity(x, y), abs=1e-6)
        removed = naive_linearity(x, y - x)
        assert got[("linearity_residual_removed", k, None)] == pytest.approx(removed, abs=1e-6)

    if model_type not in MOE:
        check_neurons(rows["neuron_entropy"], ref, embedding.detach().double().numpy())

    check_block_ablation(rows["block_ablation"], ref, own_ce)


def check_neurons(rows: dict, ref: Reference, embeddings: np.ndarray) -> None:
    """neuron_entropy against act() recomputed in float64 from each block's MLP input."""
    ids = TOKENS.reshape(-1)
    for block, (mlp_in, module) in enumerate(zip(ref.mlp_inputs, ref.blocks, strict=True), 1):
        with torch.no_grad():
            a = own_firing(ref.model_type, module.mlp, mlp_in.reshape(-1, mlp_in.shape[-1]))
        a = a.numpy()  # [N, m]
        tok = token_entropy(a, ids)
        assert rows[("neurons", block, None)] == a.shape[1]
        assert rows[("dead_neurons", block, None)] == int(np.isnan(tok).sum())
        for n in range(a.shape[1]):
            if not math.isnan(tok[n]):
                assert rows[("token_entropy", block, n)] == pytest.approx(tok[n], abs=1e-6)
            sem = naive_semantic_entropy(a, ids, embeddings, n, 8, 5)
            if math.isnan(sem):
                assert ("semantic_entropy", block, n) not in rows
            else:
                assert rows[("semantic_entropy", block, n)] == pytest.approx(sem, abs=1e-9)


def check_block_ablation(rows: dict, ref: Reference, own_ce: float) -> None:
    """Each block swapped for the identity / a numpy ridge fit, the whole model rerun."""
    assert rows[("cross_entropy", None, None)] == pytest.approx(own_ce, abs=1e-5)
    outputs = [*ref.hidden[1:-1], ref.pre]
    path = BLOCKS.get(ref.model_type, "model.layers")
    for k in range(len(ref.blocks)):
        x = ref.hidden[k].reshape(-1, ref.pre.shape[-1]).numpy()
        weights = torch.from_numpy(ridge_fit(x, outputs[k].reshape(x.shape).numpy()))

        def linear(h, weights=weights):
            x1 = torch.cat([h.double(), torch.ones(*h.shape[:-1], 1, dtype=torch.float64)], -1)
            return (x1 @ weights).to(h.dtype)

        for metric, fn in (("cross_entropy_skip", lambda h: h), ("cross_entropy_linear", linear)):
            edited = copy.deepcopy(ref.model)
            blocks = edited.get_submodule(path)
            blocks[k] = Swap(blocks[k], fn)
            with torch.no_grad():
                expected = ref.cross_entropy(edited(input_ids=ref.ids).logits)
            assert rows[(metric, k + 1, None)] == pytest.approx(expected, abs=1e-5), (metric, k)


def layer0(model, model_type: str, ids: torch.Tensor) -> torch.Tensor:
    """hidden_states[0] as the table's ``layer0`` describes it, from the embedding weights."""
    described = TABLE[model_type].layer0
    tokens = model.get_input_embeddings().weight[ids]  # E[x], [seq, pos, d]
    if described == architectures.ROTARY:
        return tokens
    if described == architectures.SCALED:  # Gemma's normalizer is rounded to the dtype
        return tokens * torch.tensor(model.config.hidden_size**0.5, dtype=tokens.dtype)
    if described.startswith("E[x] + P[t]"):
        return tokens + model.transformer.wpe.weight[: ids.shape[1]]
    if described.startswith("LayerNorm(E[x])"):
        return model.transformer.word_embeddings_layernorm(tokens)
    if described == "E[x] * config.embedding_multiplier":
        return tokens * model.config.embedding_multiplier
    raise AssertionError(f"no reference for {described!r}")


@pytest.mark.parametrize("model_type", sorted(TABLE))
def test_layer0_is_what_the_table_says(tiny, model_type):
    model = load_model(tiny(model_type) / "main", "float32", "cpu")
    ids = torch.from_numpy(TOKENS)
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        torch.testing.assert_close(hidden[0], layer0(model, model_type, ids))


def test_a_family_not_in_the_table_runs_what_needs_no_row(tiny, monkeypatch):
    monkeypatch.delitem(TABLE, "llama")
    rows, failures, result = run(tiny("llama"))
    why = (
        "model_type 'llama' is not in the architecture table (ckptlab/architectures.py): "
        "its blocks, final norm and MLP are not declared"
    )
    needs_a_row = ("anisotropy", "block_ablation", "head_rank_proxy", "logit_lens")
    assert failures == {name: f"{name}: {why}" for name in (*needs_a_row, "neuron_entropy")}
    assert set(rows) == {"saturation", "singular_entropy", "dispersion", "intrinsic_dimension",
                         "linearity"}  # fmt: skip
    assert result.model_type == "llama" and result.tied_head is False
    ref = Reference(load_model(tiny("llama") / "main", "float32", "cpu"), "llama")
    own_ce = ref.cross_entropy(ref.logits)
    assert rows["saturation"][("cross_entropy", None, None)] == pytest.approx(own_ce, abs=1e-5)


SELF_CHECK = re.compile(
    r"(logit_lens|head_rank_proxy): readout self-check failed: final_norm\+head gives logits up "
    r"to ([0-9.e+-]+) from the model's own \(tolerance [0-9.e+-]+; model_type (\w+)\)"
)


@pytest.mark.parametrize("model_type", ["granite", "cohere", "gemma2"])
def test_a_wrong_row_fails_the_readout_cells_and_nothing_else(tiny, monkeypatch, model_type):
    """The table's post-processing taken away: the readout no longer gives the model's logits,
    the self-check says by how much, and the analyses that do not read out are untouched."""
    wrong = replace(TABLE[model_type], logits="none", logits_config=None)
    monkeypatch.setitem(TABLE, model_type, wrong)
    names = ("saturation", "logit_lens", "head_rank_proxy", "anisotropy", "neuron_entropy")
    rows, failures, _ = run(tiny(model_type), names)
    assert set(failures) == {"logit_lens", "head_rank_proxy"}
    for name, error in failures.items():
        match = SELF_CHECK.fullmatch(error)
        assert match, error
        assert match[1] == name and match[3] == model_type and float(match[2]) > 0.1
    assert set(rows) == {"saturation", "anisotropy", "neuron_entropy"}
    ref = Reference(load_model(tiny(model_type) / "main", "float32", "cpu"), model_type)
    own_ce = ref.cross_entropy(ref.logits)
    assert rows["saturation"][("cross_entropy", None, None)] == pytest.approx(own_ce, abs=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox"])
def test_neurons_are_the_activation_functions_output(tiny, model_type):
    """neuron_entropy v2 reads act(W_gate x) in a gated MLP (Llama) and act(W_in x + b) in a
    plain one (GPT-NeoX), recomputed here in float64 from each block's MLP input; in the gated
    MLP that is not the output projection's input act(W_gate x) * (W_up x), which v1 read."""
    model = load_model(tiny(model_type) / "main", "float32", "cpu")
    ref = Reference(model, model_type)
    ids = torch.from_numpy(TOKENS)
    capture = capture_forward(model, ids, {Need.MLP_ACTIVATIONS}, BATCH, VOCAB)
    assert len(capture.mlp_activations) == len(ref.blocks)
    for got, mlp_in, block in zip(capture.mlp_activations, ref.mlp_inputs, ref.blocks, strict=True):
        with torch.no_grad():
            firing = own_firing(model_type, block.mlp, mlp_in)  # [seq, pos, d_mlp]
        torch.testing.assert_close(got.double(), firing, rtol=1e-5, atol=1e-6)
        if model_type == "llama":
            down_input = firing * F.linear(mlp_in, block.mlp.up_proj.weight.double())
            assert not torch.allclose(got.double(), down_input, atol=1e-3)
