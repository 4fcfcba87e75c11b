"""Shipped analyses. Importing this package registers each of them (one file per analysis)."""

from ckptlab.analyses import (  # noqa: F401
    anisotropy,
    block_ablation,
    cka,
    dispersion,
    head_rank_proxy,
    icl,
    intrinsic_dimension,
    linearity,
    lm_eval_harness,
    logit_lens,
    neuron_entropy,
    saturation,
    singular_entropy,
)
from ckptlab.analyses.capture import Batch, Capture, CheckpointContext
from ckptlab.analyses.registry import (
    AnalysisDef,
    MetricValue,
    Need,
    Reducer,
    get_analysis,
    registered_analyses,
)

__all__ = [
    "AnalysisDef",
    "Batch",
    "Capture",
    "CheckpointContext",
    "MetricValue",
    "Need",
    "Reducer",
    "get_analysis",
    "registered_analyses",
]
