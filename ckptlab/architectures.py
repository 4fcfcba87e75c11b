"""Architectures by declaration: what ckptlab reads in a causal LM, one row per transformers
``model_type``, instead of guessing module names.

A row names, as module paths (``model.get_submodule``): the list of blocks, the final norm,
each block's MLP, the module whose output is an MLP neuron's firing, the MLP's output
projection, the LM head; and what the model does to the head's output before it calls it
logits. Whether the head is tied is read from the loaded model (the head's weight IS the input
embedding's), never from the table or the config: a checkpoint may untie what its config ties.

What the analyses get from a row:

- readout (logit lens, head rank proxy): logits = post(head(final_norm(h))), where post is the
  row's ``logits`` op with its config value:
    none      logits = z
    divide    logits = z / config.logits_scaling            (Granite)
    multiply  logits = z * config.logit_scale               (Cohere)
    softcap   logits = c * tanh(z / c), c = config.final_logit_softcapping, when set (Gemma 2/3)
  Every pass checks this path against the model's own logits on its first batch
  (``orchestrator/forward.py``): a row that is wrong fails the readout cells, never silently.
- pre_final_norm: the final norm's input, i.e. the last block's output.
- neurons (``neuron_entropy``): the output of the MLP's activation function, the neuron's
  "firing": act(W_in x + b) in a plain MLP (GPT-NeoX, GPT-2, BLOOM, StarCoder2), act(W_gate x)
  in a gated one (Llama, OLMo, Qwen, Gemma, ...: act(W_gate x) * (W_up x) goes into the output
  projection). The same quantity in both, so the two kinds are comparable; see
  ``analyses/neuron_entropy.py`` for why not the output projection's input. A mixture of
  experts has no per-token dense neuron vector: its row says so and those cells fail alone.
- blocks (``block_ablation``): the blocks replaced one at a time.

Layer 0 (``hidden_states[0]``, what every per-layer analysis calls layer 0) differs by family:

    gpt_neox, llama, mistral, qwen2, qwen3, olmo, olmo2, olmo3, olmoe, smollm3, cohere, cohere2,
    phi3, stablelm, starcoder2, mixtral, qwen3_moe:
                     the token embedding E[x] only (positions are rotary, inside attention;
                     SmolLM3 leaves rotary out of some layers)
    gpt2:            E[x] + P[t], the learned absolute position embedding added
    bloom:           LayerNorm(E[x]) (word_embeddings_layernorm; positions are ALiBi biases)
    granite, granitemoe:
                     E[x] * config.embedding_multiplier
    gemma, gemma2, gemma3_text:
                     E[x] * sqrt(d_model) (the normalizer, rounded to the weights' dtype)

so a layer-0 metric compares like with like only within a family. ``layer0`` in each row says
the same, and ``tests/test_architectures.py`` checks every one of them against the model.

A model_type not in the table: the analyses that need a row (readout, pre-final-norm, neuron
capture, block list) fail their own cells with one line naming it and this file; those that
read only hidden states, the model's own logits, the head or the embeddings still run. Adding
a family is one row here plus its tiny random checkpoint in ``tests/test_architectures.py``.

Owns: ``TABLE`` (one ``Architecture`` row per model_type), the modules and logits op a row
names, and whether a loaded model's head is tied. Must not: find a module by guessing its name,
import torch or transformers at module level (the planner reads ``declared_logit_op``), or
import ``analyses/`` or ``orchestrator/``, which read it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ckptlab.lazy import torch

TABLE_FILE = "ckptlab/architectures.py"
LOGIT_OPS = ("none", "divide", "multiply", "softcap")

ROTARY = "the token embeddings E[x] only (positions are rotary, inside attention)"
SCALED = "E[x] * sqrt(d_model) (the normalizer, in the weights' dtype)"


class ArchitectureError(RuntimeError):
    """What a model cannot give, in one line (unknown family, no such module, a mixture of
    experts asked for neurons)."""


@dataclass(frozen=True)
class Architecture:
    blocks: str  # the causal LM's ModuleList of blocks, e.g. "model.layers"
    final_norm: str  # applied to the last block's output, e.g. "model.norm"
    mlp: str | None  # inside a block: the MLP (its input and output are the MLP's)
    neurons: str | None  # inside a block: the module whose OUTPUT is the neuron firing
    mlp_out: str | None  # inside a block: the MLP's output projection
    gated: bool  # act(W_gate x) * (W_up x) goes into mlp_out
    layer0: str  # what hidden_states[0] holds
    logits: str = "none"  # what the model does to head(h): one of LOGIT_OPS
    logits_config: str | None = None  # the config attribute the op reads
    lm_head: str = "lm_head"
    no_neurons: str | None = None  # why there is no neuron capture (neurons is None)

    def __post_init__(self):
        assert self.logits in LOGIT_OPS, self.logits
        assert (self.logits == "none") == (self.logits_config is None), self.logits_config
        assert (self.neurons is None) == (self.no_neurons is not None), self.neurons


# Llama's layout, shared by most decoder-only families since: pre-norm blocks in model.layers,
# RMSNorm model.norm, a SwiGLU MLP gate_proj / up_proj / down_proj with act_fn on the gate.
_LLAMA = Architecture(
    blocks="model.layers",
    final_norm="model.norm",
    mlp="mlp",
    neurons="mlp.act_fn",
    mlp_out="mlp.down_proj",
    gated=True,
    layer0=ROTARY,
)


def _moe(model_type: str, mlp: str = "mlp", **changes) -> Architecture:
    """A mixture of experts: each token goes through its top-k experts, so a layer has no
    dense vector of neurons per token; everything else is Llama's layout."""
    why = f"{model_type}'s MLP is a mixture of experts; neuron activations are not captured"
    return replace(_LLAMA, mlp=mlp, neurons=None, mlp_out=None, no_neurons=why, **changes)


TABLE: dict[str, Architecture] = {
    "gpt_neox": Architecture(
        blocks="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        mlp="mlp",
        neurons="mlp.act",
        mlp_out="mlp.dense_4h_to_h",
        gated=False,
        layer0=ROTARY,
    ),
    "gpt2": Architecture(
        blocks="transformer.h",
        final_norm="transformer.ln_f",
        mlp="mlp",
        neurons="mlp.act",
        mlp_out="mlp.c_proj",
        gated=False,
        layer0="E[x] + P[t]: token plus learned absolute position embeddings",
    ),
    "bloom": Architecture(
        blocks="transformer.h",
        final_norm="transformer.ln_f",
        mlp="mlp",
        neurons="mlp.gelu_impl",
        mlp_out="mlp.dense_4h_to_h",
        gated=False,
        layer0="LayerNorm(E[x]): word_embeddings_layernorm (positions are ALiBi biases)",
    ),
    "starcoder2": replace(_LLAMA, neurons="mlp.act", mlp_out="mlp.c_proj", gated=False),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "olmo": _LLAMA,
    "olmo2": _LLAMA,
    "olmo3": _LLAMA,
    "smollm3": _LLAMA,
    "stablelm": _LLAMA,
    # gate_up_proj is one fused matrix; activation_fn is applied to its gate half only.
    "phi3": replace(_LLAMA, neurons="mlp.activation_fn"),
    "granite": replace(
        _LLAMA,
        logits="divide",
        logits_config="logits_scaling",
        layer0="E[x] * config.embedding_multiplier",
    ),
    "cohere": replace(_LLAMA, logits="multiply", logits_config="logit_scale"),
    "cohere2": replace(_LLAMA, logits="multiply", logits_config="logit_scale"),
    "gemma": replace(_LLAMA, layer0=SCALED),
    "gemma2": replace(
        _LLAMA, logits="softcap", logits_config="final_logit_softcapping", layer0=SCALED
    ),
    "gemma3_text": replace(
        _LLAMA, logits="softcap", logits_config="final_logit_softcapping", layer0=SCALED
    ),
    "olmoe": _moe("olmoe"),
    "qwen3_moe": _moe("qwen3_moe"),
    "mixtral": _moe("mixtral"),
    "granitemoe": _moe(
        "granitemoe",
        mlp="block_sparse_moe",
        logits="divide",
        logits_config="logits_scaling",
        layer0="E[x] * config.embedding_multiplier",
    ),
}


# Every family of TABLE is one of transformers' own from this release on (checked against the
# installed transformers' CONFIG_MAPPING_NAMES by tests/test_architectures.py).
TABLE_KNOWN_SINCE = "5.23.0"


def table_is_known() -> bool:
    """Whether the installed transformers knows every family of TABLE, read from its
    package metadata: no import (transformers brings torch, 3 s in all)."""
    from importlib.metadata import version

    from packaging.version import Version

    return Version(version("transformers")) >= Version(TABLE_KNOWN_SINCE)


def model_type(model) -> str:
    """The loaded config's model_type (the table's key)."""
    return getattr(model.config, "model_type", None) or type(model).__name__


def lookup(model) -> Architecture:
    kind = model_type(model)
    if kind not in TABLE:
        raise ArchitectureError(
            f"model_type {kind!r} is not in the architecture table ({TABLE_FILE}): its blocks, "
            "final norm and MLP are not declared"
        )
    return TABLE[kind]


def _module(model, path: str) -> torch.nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ArchitectureError(
            f"{model_type(model)}: no module {path!r} in {type(model).__name__}, which the "
            f"architecture table ({TABLE_FILE}) names"
        ) from None


def blocks(model) -> torch.nn.ModuleList:
    """The model's blocks, in order."""
    found = _module(model, lookup(model).blocks)
    if not isinstance(found, torch.nn.ModuleList):
        raise ArchitectureError(f"{model_type(model)}: {lookup(model).blocks} is not a ModuleList")
    return found


def final_norm(model) -> torch.nn.Module:
    return _module(model, lookup(model).final_norm)


def lm_head(model) -> torch.nn.Module:
    """The LM head: the table's module, or transformers' own get_output_embeddings() for a
    family not in the table (the head weight needs no row: singular_entropy reads it)."""
    if model_type(model) not in TABLE:
        return model.get_output_embeddings()
    return _module(model, lookup(model).lm_head)


def _per_block(model, path: str | None, what: str) -> list[torch.nn.Module]:
    arch = lookup(model)
    if path is None:
        raise ArchitectureError(arch.no_neurons)
    found = [_module(block, path) for block in blocks(model)]
    # One module per block: a module shared by every block (one activation instance) would
    # fire once per block into each block's hook.
    if len({id(m) for m in found}) != len(found):
        raise ArchitectureError(f"{model_type(model)}: the blocks share one {what} module {path}")
    return found


def neuron_modules(model) -> list[torch.nn.Module]:
    """Per block, the module whose output is the neuron firing (activation function)."""
    return _per_block(model, lookup(model).neurons, "activation")


def mlp_out_projections(model) -> list[torch.nn.Module]:
    """Per block, the MLP's output projection."""
    return _per_block(model, lookup(model).mlp_out, "output projection")


@dataclass(frozen=True)
class LogitOp:
    """What a family does to the head's output: z -> logits (see LOGIT_OPS)."""

    kind: str
    value: float

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "divide":
            return z / self.value
        if self.kind == "multiply":
            return z * self.value
        return torch.tanh(z / self.value) * self.value  # softcap


def logit_op(model) -> LogitOp | None:
    """The family's post-processing of head(h) with this checkpoint's config value; None when
    logits are head(h) itself (a soft-cap that the config leaves unset included)."""
    arch = lookup(model)
    if arch.logits == "none":
        return None
    value = getattr(model.config, arch.logits_config, None)
    if value is None and arch.logits == "softcap":
        return None
    if value is None:
        raise ArchitectureError(f"{model_type(model)}: config.{arch.logits_config} is not set")
    return LogitOp(arch.logits, float(value))


def declared_logit_op(config: dict) -> str | None:
    """From a config.json alone (planning has no model): the family's post-processing of
    head(h) with its value, e.g. "divide 4.0"; None when logits are head(h) itself."""
    arch = TABLE.get(config.get("model_type"))
    if arch is None or arch.logits == "none" or config.get(arch.logits_config) is None:
        return None
    return f"{arch.logits} {float(config[arch.logits_config])}"


def tied_head(model) -> bool:
    """Whether the LM head's weight is the input embedding matrix, read from the loaded model
    (the same tensor, or the same storage when loading put the two apart as views)."""
    try:
        head = lm_head(model)
    except ArchitectureError:  # the row names no such module: the readout cells say so
        head = model.get_output_embeddings()
    embedding = model.get_input_embeddings()
    if head is None or embedding is None:
        return False
    a, b = head.weight, embedding.weight
    return a is b or (a.shape == b.shape and a.data_ptr() == b.data_ptr())
