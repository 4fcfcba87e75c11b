"""ONE forward pass over one input set, streamed batch by batch, capturing only what the
requested analyses need (their ``needs`` are the names of the hooks this pass sets).

Where to hook is read from the architecture table (``architectures.py``), never guessed.
What a checkpoint cannot give (a family without a row, a mixture of experts' neurons, a
readout that does not reproduce the model's logits) goes into ``context.unavailable``: the
analyses that need it fail their own cells, the others run.

Owns: the hooks and what a pass captures (``stream_forward``), the checkpoint's context
(``checkpoint_context``) and the readout self-check. Must not: run the analyses
(``input_set_pass.py`` feeds them) or retry, and ``stream_forward`` must not hold a batch once
the next one is asked for (``capture_forward``, which holds them all, is for tests and
benchmarks).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from ckptlab import architectures
from ckptlab.analyses.capture import Batch, Capture, CheckpointContext
from ckptlab.analyses.registry import FORWARD_NEEDS, Need
from ckptlab.architectures import ArchitectureError
from ckptlab.lazy import F, inference_mode, torch

# The readout self-check's tolerance, in units of the head dtype's epsilon times the largest
# logit: the readout repeats the model's own ops on the same tensors, so in float32 it agrees to
# the last bits; in bfloat16 the model rounds head(h) before its post-processing and the readout
# after (<= 1 ulp). A wrong row is off by far more: Granite's logits_scaling 4 is 75 % of every
# logit, a missed soft-cap at 30 is 24 % of a logit of 30.
CHECK_EPS = 8
CHECK_MIN_RELATIVE = 1e-5  # float32's floor: 84 eps, for summation orders that differ


def final_norm_module(model) -> torch.nn.Module:
    """The model's final norm, from the architecture table."""
    return architectures.final_norm(model)


def mlp_out_projections(model) -> list[torch.nn.Module]:
    """Each block's MLP output projection, from the architecture table. Its input is not what
    ``neuron_entropy`` reads in a gated MLP (see ``architectures.neuron_modules``)."""
    return architectures.mlp_out_projections(model)


def checkpoint_context(
    model,
    token_ids: torch.Tensor | None,  # [seq, pos] int64, the whole input set
    needs: set[Need],
    tokenizer_vocab_size: int | None,
) -> CheckpointContext:
    """What does not change during the pass: weights the analyses read, the token ids, and
    what this checkpoint cannot give (``unavailable``, one line per need)."""
    context = CheckpointContext(
        input_ids=token_ids,
        tokenizer_vocab_size=tokenizer_vocab_size,
        model_type=architectures.model_type(model),
    )
    refused = context.unavailable
    if needs & {Need.LM_HEAD, Need.READOUT}:
        try:
            head = architectures.lm_head(model)
            if head is None:
                raise ArchitectureError(f"{context.model_type}: no LM head")
            if head.bias is not None:
                raise ArchitectureError(f"{context.model_type}: LM heads with a bias are not read")
            context.lm_head_weight = head.weight.detach()  # [d_vocab_padded, d_model]
        except ArchitectureError as err:
            refused[Need.LM_HEAD] = refused[Need.READOUT] = str(err)
    if Need.READOUT in needs and Need.READOUT not in refused:
        try:
            context.final_norm = architectures.final_norm(model)
            context.logit_transform = architectures.logit_op(model)
        except ArchitectureError as err:
            refused[Need.READOUT] = str(err)
    if Need.PRE_FINAL_NORM in needs:
        try:
            architectures.final_norm(model)
        except ArchitectureError as err:
            refused[Need.PRE_FINAL_NORM] = str(err)
    if Need.MLP_ACTIVATIONS in needs:
        try:
            architectures.neuron_modules(model)
        except ArchitectureError as err:
            refused[Need.MLP_ACTIVATIONS] = str(err)
    if Need.EMBEDDINGS in needs:
        context.input_embedding_weight = model.get_input_embeddings().weight.detach()
    return context


def readout_self_check(
    context: CheckpointContext,
    logits: torch.Tensor,  # [b, pos, vocab]: the model's own
    pre_final_norm: torch.Tensor | None,  # [b, pos, d_model]
    last_hidden: torch.Tensor | None,  # [b, pos, d_model] hidden_states[L], when captured
) -> str | None:
    """Why ``context.readout_logits`` (final norm + head + the family's post-processing) does
    not give the model's own logits, from the last block's output and from hidden_states[L];
    None when it does, within the tolerance above."""
    if pre_final_norm is None:
        return (
            f"readout self-check failed: the final norm was not called in the forward pass "
            f"(model_type {context.model_type})"
        )
    dtype = context.require("lm_head_weight").dtype
    gaps, scale = [], 1.0
    for i in range(logits.shape[0]):  # one sequence at a time: [pos, vocab] temporaries
        own = logits[i].float()
        scale = max(scale, float(own.abs().max()))
        for hidden, normed in ((pre_final_norm, False), (last_hidden, True)):
            if hidden is not None:
                mine = context.readout_logits(hidden[i], normed=normed)
                gaps.append(float((mine - own.to(mine.device)).abs().max()))
    worst = math.nan if any(math.isnan(g) for g in gaps) else max(gaps)
    tolerance = max(CHECK_EPS * torch.finfo(dtype).eps, CHECK_MIN_RELATIVE) * scale
    if worst <= tolerance:  # NaN never is
        return None
    return (
        f"readout self-check failed: final_norm+head gives logits up to {worst:.3g} from the "
        f"model's own (tolerance {tolerance:.2g}; model_type {context.model_type})"
    )


@inference_mode
def stream_forward(
    model,
    token_ids: torch.Tensor,  # [seq, pos] int64
    needs: set[Need],
    batch_size: int,
    context: CheckpointContext | None = None,
) -> Iterator[Batch]:
    """The pass, one batch at a time: each Batch holds only this batch's captures, and the
    previous one is released before the next is computed. Needs in ``context.unavailable``
    (``checkpoint_context``'s when none is given) are not captured; a READOUT need runs the
    readout self-check on the first batch and, when it fails, adds READOUT to
    ``context.unavailable`` before that batch is handed out (``batch.unavailable`` is that
    dict)."""
    if context is None:
        context = checkpoint_context(model, token_ids, needs, None)
    needs = {n for n in needs if n not in context.unavailable}
    if not needs & FORWARD_NEEDS:
        return
    device = model.get_input_embeddings().weight.device  # where the ids go (device_map: first)
    want_hidden = Need.HIDDEN_STATES in needs
    check = Need.READOUT in needs  # pending until the first batch
    pre_norm: list[torch.Tensor] = []  # filled by the hooks during one batch, then cleared
    fired: list[list[torch.Tensor]] = []  # per block: its neuron module's outputs this batch
    # The hooks stay registered while batches are handed out, and analyses call the same
    # modules (the logit lens reads every layer through the final norm): capture only
    # inside the model's own forward.
    capturing = False

    def keep_pre_norm(_module, args) -> None:
        if capturing:
            pre_norm.append(args[0].detach())

    def keep_neurons(block: int):
        def hook(_module, _args, output) -> None:
            if capturing:
                fired[block].append(output.detach())

        return hook

    hooks = []
    if Need.PRE_FINAL_NORM in needs or check:
        # The final norm's input is the last block's output before the norm.
        norm = architectures.final_norm(model)
        hooks.append(norm.register_forward_pre_hook(keep_pre_norm))
    if Need.MLP_ACTIVATIONS in needs:
        for block, module in enumerate(architectures.neuron_modules(model)):
            fired.append([])
            hooks.append(module.register_forward_hook(keep_neurons(block)))
    try:
        for start in range(0, token_ids.shape[0], batch_size):
            ids = token_ids[start : start + batch_size].to(device)  # [b, pos]
            # The causal LM's own logits when token NLL or the self-check reads them; else
            # the base model alone (a 50k-row head is most of a small model's forward).
            own_logits = Need.TOKEN_NLL in needs or check
            forward = model if own_logits else model.base_model
            capturing = True
            out = forward(input_ids=ids, output_hidden_states=want_hidden, use_cache=False)
            capturing = False
            batch = Batch(input_ids=ids, start=start, unavailable=context.unavailable)
            if want_hidden:
                batch.hidden_states = tuple(h.detach() for h in out.hidden_states)
            pre = pre_norm[-1] if pre_norm else None  # the norm's last call is the model's
            pre_norm.clear()
            if Need.PRE_FINAL_NORM in needs:
                batch.pre_final_norm = pre
            if fired:
                counts = [len(outputs) for outputs in fired]
                if all(n == 1 for n in counts):
                    batch.mlp_activations = tuple(outputs[0] for outputs in fired)
                elif Need.MLP_ACTIVATIONS not in context.unavailable:
                    context.unavailable[Need.MLP_ACTIVATIONS] = (
                        f"{context.model_type}: the neuron modules fired {counts} times in one "
                        "forward pass (once per block expected); neurons not captured"
                    )
                for outputs in fired:
                    outputs.clear()
            if check:
                last = batch.hidden_states[-1] if want_hidden else None
                why = readout_self_check(context, out.logits, pre, last)
                if why is not None:
                    context.unavailable[Need.READOUT] = why
                check = False
            if Need.TOKEN_NLL in needs:
                logits = out.logits.float()  # [b, pos, vocab], fp32 log-softmax
                nll = F.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]),
                    ids[:, 1:].reshape(-1).to(logits.device),
                    reduction="none",
                )
                del logits
                batch.token_nll = nll.view(ids.shape[0], -1)  # [b, pos - 1]
            del out, pre
            yield batch
            del batch
    finally:
        for hook in hooks:
            hook.remove()


def capture_forward(
    model,
    token_ids: torch.Tensor | None,  # [seq, pos] int64, or None when nothing needs a pass
    needs: set[Need],
    batch_size: int,
    tokenizer_vocab_size: int | None,
) -> Capture:
    """The whole pass concatenated into one Capture (tests and benchmarks: it holds every
    batch at once, which the runner never does). What the checkpoint cannot give is in
    ``capture.unavailable`` and left None."""
    context = checkpoint_context(model, token_ids, needs, tokenizer_vocab_size)
    capture = Capture(**vars(context))
    if token_ids is None or not needs & FORWARD_NEEDS:
        return capture
    # The Capture is the context the pass reports to (its ``unavailable`` is the same dict).
    batches = list(stream_forward(model, token_ids, needs, batch_size, capture))

    def cat(field: str):
        parts = [getattr(b, field) for b in batches]
        if not parts or any(p is None for p in parts):
            return None
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(layer) for layer in zip(*parts, strict=True))
        return torch.cat(parts)

    for field in ("hidden_states", "pre_final_norm", "mlp_activations", "token_nll"):
        setattr(capture, field, cat(field))
    return capture
