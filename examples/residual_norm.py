"""A streaming per-layer statistic: the mean and spread of the residual stream's L2 norm.

    ckptlab run examples/residual_norm.yaml

The state is three float64 sums per layer (count, sum of norms, sum of squared norms): they
merge exactly across batches, so the result does not depend on the batch size.
"""

import math

import torch

from ckptlab.analysis import MetricValue, Need, Params, Reducer, analysis


class ResidualNormParams(Params):
    drop_first_position: bool = True  # position 0 carries the huge-norm "attention sink"


@analysis(name="residual_norm", version=1, needs={Need.HIDDEN_STATES}, params=ResidualNormParams)
class ResidualNorm(Reducer[ResidualNormParams]):
    """Mean L2 norm of the residual stream per layer, and its standard deviation.

        norm_mean_k = (1/N) sum_i ||h_i^k||,  norm_std_k = sqrt((1/N) sum_i ||h_i^k||^2 - mean^2)

    over every token vector h_i of hidden_states[k] (k = 0 embeddings .. L after the final
    norm). Norm growth with depth and training: Heimersheim & Turner 2023, "Residual stream
    norms grow exponentially over the forward pass".
    """

    def __init__(self, params, context):
        super().__init__(params, context)
        self.sums: list[torch.Tensor] = []  # per layer: [count, sum, sum of squares], float64

    def update(self, batch):
        first = 1 if self.params.drop_first_position else 0
        for k, h in enumerate(batch.require("hidden_states")):  # [b, pos, d]
            norms = torch.linalg.vector_norm(h[:, first:].double(), dim=-1)  # [b, pos - first]
            if k == len(self.sums):
                self.sums.append(torch.zeros(3, dtype=torch.float64))
            self.sums[k] += torch.stack(
                [torch.tensor(norms.numel()), norms.sum(), norms.square().sum()]
            ).cpu()

    def finalize(self):
        rows = []
        for k, (count, total, squares) in enumerate(self.sums):
            mean = float(total / count)
            rows.append(MetricValue("norm_mean", mean, layer=k))
            rows.append(
                MetricValue(
                    "norm_std", math.sqrt(max(float(squares / count) - mean**2, 0.0)), layer=k
                )
            )
        return rows
