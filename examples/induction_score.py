"""An analysis that runs the model on its own inputs, like the ICL probes: the induction score.

    ckptlab run examples/induction_score.yaml

Induction heads (Olsson et al. 2022, "In-context Learning and Induction Heads") let a model
continue a sequence it has seen earlier in its context. This probe builds random token
segments, shows each twice, and compares the log-likelihood of the second copy with the first.
"""

import torch
from pydantic import Field

from ckptlab.analysis import MetricValue, Need, Params, Reducer, analysis


class InductionParams(Params):
    length: int = Field(32, ge=3)  # tokens per random segment
    sequences: int = Field(16, ge=1)
    seed: int = 0


@analysis(name="induction_score", version=1, needs={Need.MODEL}, params=InductionParams)
class InductionScore(Reducer[InductionParams]):
    """Induction score of a checkpoint (Olsson et al. 2022).

    For ``sequences`` random segments s of ``length`` T tokens (uniform over the tokenizer's
    vocabulary, seeded), the model reads s s. With lp_j = ln p(x_{j+1} | x_<=j):

        induction_score = mean_{j >= T} lp_j - mean_{j < T-1} lp_j   (nats per token)
        copy_accuracy   = share of second-copy tokens x_{j+1}, j >= T, that are the argmax

    The first token of the second copy is left out of both: nothing before it says what
    follows. A model without induction scores ~0; one that copies, several nats.
    """

    def finalize(self):
        model, tokenizer = self.context.require("model"), self.context.require("tokenizer")
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(self.params.seed)
        size = (self.params.sequences, self.params.length)
        segment = torch.randint(0, len(tokenizer), size, generator=generator)
        ids = torch.cat([segment, segment], dim=1).to(device)  # [n, 2T]
        logits = model(input_ids=ids).logits.float()  # [n, 2T, vocab]
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)  # position j predicts x_{j+1}
        observed = log_probs.gather(-1, ids[:, 1:, None])[..., 0]  # [n, 2T - 1]
        T = self.params.length
        first, second = observed[:, : T - 1], observed[:, T:]
        copied = logits[:, T:-1].argmax(-1) == ids[:, T + 1 :]
        return [
            MetricValue("induction_score", float(second.mean() - first.mean())),
            MetricValue("copy_accuracy", float(copied.float().mean())),
        ]
