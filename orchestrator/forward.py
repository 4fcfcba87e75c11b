"""ONE forward pass over one input set, streamed batch by batch, capturing only what the
requested analyses need (their ``needs`` are the names of the hooks this pass sets)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ckptlab.analyses.capture import Batch, Capture, CheckpointContext
from ckptlab.analyses.registry import FORWARD_NEEDS, Need

# Where common causal-LM families keep the final norm, on their base model.
_FINAL_NORM_NAMES = ("final_layer_norm", "norm", "ln_f", "final_norm")
# Each block's MLP output projection; its input is the neuron activation vector, for plain
# (act(W_in x)) and gated (act(W_g x) * W_u x) MLPs alike.
_MLP_OUT_NAMES = ("mlp.dense_4h_to_h", "mlp.down_proj", "mlp.c_proj", "mlp.fc2", "mlp.fc_out")


def mlp_out_projections(model) -> list[torch.nn.Module]:
    found = [m for name, m in model.named_modules() if name.endswith(_MLP_OUT_NAMES)]
    if not found:
        raise RuntimeError(f"{type(model).__name__}: cannot find the MLP output projections")
    return found


def final_norm_module(model) -> torch.nn.Module:
    base = model.base_model
    for name in _FINAL_NORM_NAMES:
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise RuntimeError(f"{type(model).__name__}: cannot find the final norm module")


def checkpoint_context(
    model,
    token_ids: torch.Tensor | None,  # [seq, pos] int64, the whole input set
    needs: set[Need],
    tokenizer_vocab_size: int | None,
) -> CheckpointContext:
    """What does not change during the pass: weights the analyses read, the token ids."""
    context = CheckpointContext(input_ids=token_ids, tokenizer_vocab_size=tokenizer_vocab_size)
    head = model.get_output_embeddings()
    if needs & {Need.LM_HEAD, Need.READOUT}:
        if head.bias is not None:
            raise RuntimeError(f"{type(model).__name__}: LM heads with a bias are not supported")
        context.lm_head_weight = head.weight.detach()  # [d_vocab_padded, d_model]
    if Need.READOUT in needs:
        context.final_norm = final_norm_module(model)
    if Need.EMBEDDINGS in needs:
        context.input_embedding_weight = model.get_input_embeddings().weight.detach()
    return context


@torch.inference_mode()
def stream_forward(
    model,
    token_ids: torch.Tensor,  # [seq, pos] int64
    needs: set[Need],
    batch_size: int,
) -> Iterator[Batch]:
    """The pass, one batch at a time: each Batch holds only this batch's captures, and the
    previous one is released before the next is computed."""
    if not needs & FORWARD_NEEDS:
        return
    head = model.get_output_embeddings()
    device = model.get_input_embeddings().weight.device  # where the ids go (device_map: first)
    want_hidden = Need.HIDDEN_STATES in needs
    pre_norm: list[torch.Tensor] = []  # filled by the hooks during one batch, then cleared
    mlp: dict[int, torch.Tensor] = {}
    # The hooks stay registered while batches are handed out, and analyses call the same
    # modules (the logit lens reads every layer through the final norm): capture only
    # inside the model's own forward.
    capturing = False

    def keep_pre_norm(_module, args) -> None:
        if capturing:
            pre_norm.append(args[0].detach())

    def keep_mlp(block: int):
        def hook(_module, args) -> None:
            if capturing:
                mlp[block] = args[0].detach()

        return hook

    hooks = []
    if Need.PRE_FINAL_NORM in needs:
        # The final norm's input is the last block's output before the norm.
        hooks.append(final_norm_module(model).register_forward_pre_hook(keep_pre_norm))
    if Need.MLP_ACTIVATIONS in needs:
        for block, module in enumerate(mlp_out_projections(model)):
            hooks.append(module.register_forward_pre_hook(keep_mlp(block)))
    try:
        for start in range(0, token_ids.shape[0], batch_size):
            ids = token_ids[start : start + batch_size].to(device)  # [b, pos]
            capturing = True
            out = model.base_model(input_ids=ids, output_hidden_states=want_hidden)
            capturing = False
            batch = Batch(input_ids=ids, start=start)
            if want_hidden:
                batch.hidden_states = tuple(h.detach() for h in out.hidden_states)
            if pre_norm:
                batch.pre_final_norm = pre_norm.pop()
            if mlp:
                batch.mlp_activations = tuple(mlp[b] for b in sorted(mlp))
                mlp.clear()
            if Need.TOKEN_NLL in needs:
                logits = head(out.last_hidden_state).float()  # [b, pos, vocab], fp32 log-softmax
                nll = F.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]),
                    ids[:, 1:].reshape(-1).to(logits.device),
                    reduction="none",
                )
                del logits
                batch.token_nll = nll.view(ids.shape[0], -1)  # [b, pos - 1]
            del out
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
    batch at once, which the runner never does)."""
    context = checkpoint_context(model, token_ids, needs, tokenizer_vocab_size)
    capture = Capture(**vars(context))
    if token_ids is None or not needs & FORWARD_NEEDS:
        return capture
    batches = list(stream_forward(model, token_ids, needs, batch_size))

    def cat(field: str):
        parts = [getattr(b, field) for b in batches]
        if parts[0] is None:
            return None
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(layer) for layer in zip(*parts, strict=True))
        return torch.cat(parts)

    for field in ("hidden_states", "pre_final_norm", "mlp_activations", "token_nll"):
        setattr(capture, field, cat(field))
    return capture
