"""ONE forward pass over one input set, capturing only what the requested analyses need."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ckptlab.analyses.capture import Capture
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


@torch.inference_mode()
def capture_forward(
    model,
    token_ids: torch.Tensor | None,  # [seq, pos] int64, or None when nothing needs a forward pass
    needs: set[Need],
    batch_size: int,
    tokenizer_vocab_size: int | None,
) -> Capture:
    capture = Capture(tokenizer_vocab_size=tokenizer_vocab_size)
    head = model.get_output_embeddings()
    if head.bias is not None and needs & {Need.LM_HEAD, Need.READOUT}:
        raise RuntimeError(f"{type(model).__name__}: LM heads with a bias are not supported")
    if needs & {Need.LM_HEAD, Need.READOUT}:
        capture.lm_head_weight = head.weight.detach()  # [d_vocab_padded, d_model]
    if Need.READOUT in needs:
        capture.final_norm = final_norm_module(model)
    if Need.EMBEDDINGS in needs:
        capture.input_embedding_weight = model.get_input_embeddings().weight.detach()
    if token_ids is None or not needs & FORWARD_NEEDS:
        return capture
    capture.input_ids = token_ids

    device = head.weight.device
    want_hidden = Need.HIDDEN_STATES in needs
    hidden_batches: list[tuple[torch.Tensor, ...]] = []
    pre_norm_batches: list[torch.Tensor] = []
    nll_batches: list[torch.Tensor] = []

    hooks = []
    if Need.PRE_FINAL_NORM in needs:
        # The final norm's input is the last block's output before the norm.
        hooks.append(
            final_norm_module(model).register_forward_pre_hook(
                lambda _module, args: pre_norm_batches.append(args[0].detach())
            )
        )
    mlp_batches: list[list[torch.Tensor]] = []  # per block, per batch
    if Need.MLP_ACTIVATIONS in needs:
        for block, module in enumerate(mlp_out_projections(model)):
            mlp_batches.append([])
            hooks.append(
                module.register_forward_pre_hook(
                    lambda _module, args, block=block: mlp_batches[block].append(args[0].detach())
                )
            )
    try:
        for start in range(0, token_ids.shape[0], batch_size):
            batch = token_ids[start : start + batch_size].to(device)  # [b, pos]
            out = model.base_model(input_ids=batch, output_hidden_states=want_hidden)
            if want_hidden:
                hidden_batches.append(tuple(h.detach() for h in out.hidden_states))
            if Need.TOKEN_NLL in needs:
                logits = head(out.last_hidden_state).float()  # [b, pos, vocab], log-softmax in fp32
                nll = F.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]),
                    batch[:, 1:].reshape(-1),
                    reduction="none",
                )
                nll_batches.append(nll.view(batch.shape[0], -1))  # [b, pos - 1]
    finally:
        for hook in hooks:
            hook.remove()

    if want_hidden:
        n_layers = len(hidden_batches[0])
        capture.hidden_states = tuple(
            torch.cat([b[k] for b in hidden_batches]) for k in range(n_layers)
        )
    if pre_norm_batches:
        capture.pre_final_norm = torch.cat(pre_norm_batches)
    if mlp_batches:
        capture.mlp_activations = tuple(torch.cat(batches) for batches in mlp_batches)
    if nll_batches:
        capture.token_nll = torch.cat(nll_batches)
    return capture
