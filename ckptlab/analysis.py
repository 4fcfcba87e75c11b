"""The analysis API: how to write an analysis that ckptlab runs over every checkpoint.

This is the API the shipped analyses use (``ckptlab/analyses/*.py``); a plug-in is one file
that imports from here. ``API_VERSION`` changes only when something below stops working.

**An analysis** is a ``Reducer`` subclass registered with ``@analysis(name, version, needs,
params)``. For one checkpoint and one input set the runner calls::

    reducer = MyAnalysis(params, context)   # once: set up bounded state
    reducer.update(batch)                   # once per batch, in input-set order
    rows = reducer.finalize()               # once: a list of MetricValue

An analysis that reads nothing per batch (only weights, or the model with its own prompts)
implements only ``finalize``; ``needs`` without forward hooks tells the runner so, and it is
then computed once per checkpoint, not per input set.

**Hooks** (``Need``) an analysis may request; the runner captures only the union of what the
requested analyses need, in ONE forward pass per input set:

- per batch (``batch.require(name)``): ``hidden_states`` ((L+1) x [b, pos, d_model]),
  ``pre_final_norm`` ([b, pos, d_model]), ``token_nll`` ([b, pos - 1], float32 nats),
  ``mlp_activations`` (L x [b, pos, d_mlp], blocks 1..L);
- per checkpoint (``context.require(name)``): ``lm_head_weight`` (LM_HEAD),
  ``input_embedding_weight`` (EMBEDDINGS), ``final_norm`` + ``lm_head_weight`` (READOUT; see
  ``context.readout_logits``), ``model`` + ``tokenizer`` (MODEL), ``reference`` (REFERENCE),
  and always ``input_ids`` ([seq, pos], the whole input set) and ``input_shape()``.

Reading a hook that was not requested raises ``MissingCapture``.

**What an analysis may rely on.**

- Tensors are in the run's dtype (``resources.dtype``, float32 by default) on the worker's
  device; ``token_nll`` is float32 always.
- Layer k is ``hidden_states[k]``: 0 = token embeddings, L = AFTER the final norm;
  ``pre_final_norm`` is the last block's output before it.
- Input sets are fixed-length token windows: no padding, no attention mask. Batches arrive in
  order; ``batch.start`` is the first sequence's index and ``batch.positions`` the flat
  indices of its tokens in [seq * pos].
- ``update``, ``__init__`` and ``finalize`` run under ``torch.inference_mode``. Params arrive
  validated by the params model (a pydantic model that must forbid unknown fields).

**What an analysis must not do.**

- Keep references to a batch's tensors after ``update`` returns (copy what you keep, e.g. a
  sample of positions: memory must not grow with the input set).
- Move, modify or re-mode the model (MODEL), or write into captured tensors. Plug-ins get
  copies of each batch and of the weight tensors, so a plug-in that writes into them changes
  only its own view; the model itself is shared.
- Read hooks it did not declare. Depend on other analyses.

**Rows.** ``MetricValue(metric, value, layer=None, item=None, task=None, shots=None,
task_seed=None)``: ``value`` a real number, the others integers or a string (task). Anything
else fails the cell with "returned malformed rows".

**Failure is per cell.** An analysis that raises, returns malformed rows or exceeds
``resources.plugin_timeout_s`` (plug-ins only; checked between its calls) fails its own cell:
a ``failures`` row with a one-line reason. The other analyses of the unit complete.

**Keys.** A cell is (checkpoint commit, analysis name, version, params, input set) and, for a
plug-in, the sha256 of its source: editing the file recomputes its cells, nothing else. Bump
``version`` when a shipped analysis changes what it computes.

**State that merges exactly** is the rule: sums, counts, Gram or R factors, min/max, samples at
positions chosen up front (``PositionSample``). A mean of batch means is not.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ckptlab.analyses.capture import Batch, CheckpointContext, MissingCapture
from ckptlab.analyses.position_sample import PositionSample
from ckptlab.analyses.reducer import MetricValue, Need, NoParams, Reducer
from ckptlab.analyses.registry import AnalysisDef, get_analysis, registered_analyses
from ckptlab.analyses.registry import analysis as analysis

API_VERSION = 1

__all__ = [
    "API_VERSION",
    "AnalysisDef",
    "Batch",
    "CheckpointContext",
    "MetricValue",
    "MissingCapture",
    "Need",
    "NoParams",
    "Params",
    "PositionSample",
    "Reducer",
    "analysis",
    "get_analysis",
    "registered_analyses",
]


class Params(BaseModel):
    """Base of an analysis' params model: unknown fields are errors, values are frozen (they
    are part of the cell key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def reference_markdown() -> str:
    """docs/analysis-api.md, generated from this module's docstrings (a test keeps them equal):
    ``python -m ckptlab.analysis > docs/analysis-api.md``."""
    import inspect

    import ckptlab.analysis as api

    def doc(obj) -> str:
        return inspect.cleandoc(obj.__doc__ or "")

    parts = [
        f"# The analysis API (`ckptlab.analysis`, API version {API_VERSION})",
        "Generated from the docstrings by `python -m ckptlab.analysis > docs/analysis-api.md`;"
        " the tutorial is [your-own-analysis.md](your-own-analysis.md).",
        doc(api),
        "## Hooks: `Need`",
        "| name | what |\n|---|---|",
    ]
    members = inspect.getsource(Need).splitlines()
    rows = []
    for member in Need:
        line = next(m for m in members if m.strip().startswith(f"{member.name} ="))
        comment = line.split("#", 1)[1].strip() if "#" in line else ""
        rows.append(f"| `{member.value}` | {comment.replace('|', chr(92) + '|')} |")
    parts[-1] += "\n" + "\n".join(rows)
    for obj, signature in [
        (analysis, "analysis(*, name, version, needs, params=NoParams, context=None)"),
        (Reducer, "class Reducer(params, context)"),
        (Batch, "class Batch"),
        (CheckpointContext, "class CheckpointContext"),
        (MetricValue, "class MetricValue"),
        (Params, "class Params(pydantic.BaseModel)"),
        (PositionSample, "class PositionSample(positions, dtype=None)"),
    ]:
        parts.append(f"## `{signature}`")
        parts.append(doc(obj))
        if isinstance(obj, type) and hasattr(obj, "__dataclass_fields__"):
            lines = [
                line.strip()
                for line in inspect.getsource(obj).splitlines()
                if ":" in line
                and not line.strip().startswith(("def ", '"""', "@", "class "))
                and line.startswith("    ")
                and not line.startswith("        ")
            ]
            parts.append("```python\n" + "\n".join(lines) + "\n```")
    return "\n\n".join(p for p in parts if p) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
