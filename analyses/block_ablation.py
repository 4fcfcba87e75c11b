"""Block ablation: what removing one transformer block costs, next to replacing it with the
linear map that best imitates it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ckptlab import architectures
from ckptlab.analyses.capture import Batch
from ckptlab.analyses.registry import MetricValue, Need, Reducer, analysis
from ckptlab.lazy import inference_mode, torch


class BlockAblationParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Ridge added to X^T X, relative to its mean diagonal: keeps the fit defined when a layer's
    # features are collinear (a dead neuron, an input set smaller than d_model).
    ridge: float = Field(1e-8, ge=0)
    batch_size: int = Field(8, ge=1)  # sequences per ablated forward pass


def transformer_blocks(model) -> torch.nn.ModuleList:
    """The model's list of blocks, from the architecture table (ckptlab/architectures.py);
    a family without a row raises its one-line reason."""
    return architectures.blocks(model)


def _replaced(output, hidden: torch.Tensor):
    """A block's output with its hidden states swapped for ``hidden`` (tuple or tensor)."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden


def _block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a block was called with (positional in every family of the table;
    by name in case a family passes them so)."""
    return args[0] if args else kwargs["hidden_states"]


@inference_mode
def cross_entropy(model, tokens: torch.Tensor, batch_size: int) -> float:
    """Mean -ln p(x_t | x_<t) over every predicted token of ``tokens`` [seq, pos], in nats
    (log-softmax in float32, as ``saturation``)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, tokens.shape[0], batch_size):
        ids = tokens[start : start + batch_size].to(device)  # [b, pos]
        logits = model(input_ids=ids).logits.float()  # [b, pos, vocab]
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
        nll = -log_probs.gather(-1, ids[:, 1:, None])[..., 0]  # [b, pos - 1]
        total += float(nll.double().sum())
        count += nll.numel()
    return total / count


@analysis(
    name="block_ablation",
    version=1,
    needs={Need.HIDDEN_STATES, Need.PRE_FINAL_NORM, Need.TOKEN_NLL, Need.MODEL},
    params=BlockAblationParams,
)
class BlockAblation(Reducer[BlockAblationParams]):
    """Block ablation (Razzhigaev et al. 2024, "Your Transformer is Secretly Linear", its
    pruning experiment).

    Block k (1..L) maps x = hidden_states[k-1] to y = hidden_states[k] (y = pre_final_norm for
    k = L). Per block, on the input set:

        cross_entropy_skip   = CE with block k replaced by the identity, y = x
        cross_entropy_linear = CE with y = [x, 1] A_k,  A_k = argmin ||[X, 1] A - Y||_F^2
                               fitted (float64 normal equations, ridge relative to the mean
                               diagonal of X^T X) on this checkpoint's own X, Y of the input set

    next to ``cross_entropy``, the intact model's (mean token NLL in nats, as saturation).
    Rows at layer k; ``cross_entropy`` at no layer. Each ablated CE is one more pass over the
    input set (2L passes), after the shared one.
    """

    def __init__(self, params, context):
        super().__init__(params, context)
        self.gram: list[torch.Tensor] = []  # per block: [d + 1, d + 1] float64, X^T X
        self.cross: list[torch.Tensor] = []  # per block: [d + 1, d] float64, X^T Y
        self.nll_sum, self.nll_count = 0.0, 0

    def update(self, batch: Batch) -> None:
        layers = batch.require("hidden_states")  # (L+1) x [b, pos, d]
        outputs = (*layers[1:-1], batch.require("pre_final_norm"))
        for k, (x, y) in enumerate(zip(layers[:-1], outputs, strict=True)):
            x = x.reshape(-1, x.shape[-1]).double()
            ones = torch.ones(x.shape[0], 1, dtype=torch.float64, device=x.device)
            x1 = torch.cat([x, ones], dim=1)  # [n, d + 1]
            y = y.reshape(-1, y.shape[-1]).double()
            if k == len(self.gram):
                d = x.shape[1]
                self.gram.append(torch.zeros(d + 1, d + 1, dtype=torch.float64, device=x.device))
                self.cross.append(torch.zeros(d + 1, d, dtype=torch.float64, device=x.device))
            self.gram[k] += x1.T @ x1
            self.cross[k] += x1.T @ y
        nll = batch.require("token_nll")
        self.nll_sum += float(nll.double().sum())
        self.nll_count += nll.numel()

    def fitted_map(self, k: int) -> torch.Tensor:
        """A_k [d + 1, d]: the least-squares map of block k + 1 (0-based k)."""
        gram = self.gram[k]
        ridge = self.params.ridge * float(gram.diagonal().mean())
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        return torch.linalg.solve(gram + ridge * eye, self.cross[k])

    def finalize(self) -> list[MetricValue]:
        model = self.context.require("model")
        tokens = self.context.require("input_ids")
        blocks = transformer_blocks(model)
        rows = [MetricValue("cross_entropy", self.nll_sum / self.nll_count)]
        for k, block in enumerate(blocks):
            weights = self.fitted_map(k)

            def skip(module, args, kwargs, output):
                return _replaced(output, _block_input(args, kwargs))

            def linear(module, args, kwargs, output, weights=weights):
                x = _block_input(args, kwargs)
                ones = torch.ones(*x.shape[:-1], 1, dtype=torch.float64, device=x.device)
                y = torch.cat([x.double(), ones], dim=-1) @ weights
                return _replaced(output, y.to(x.dtype))

            for metric, hook in (("cross_entropy_skip", skip), ("cross_entropy_linear", linear)):
                handle = block.register_forward_hook(hook, with_kwargs=True)
                try:
                    value = cross_entropy(model, tokens, self.params.batch_size)
                finally:
                    handle.remove()
                rows.append(MetricValue(metric, value, layer=k + 1))
        return rows


block_ablation = BlockAblation.on_capture
