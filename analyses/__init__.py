"""Shipped analyses. Importing this package registers each of them (one file per analysis)."""

from ckptlab.analyses import (  # noqa: F401
    anisotropy,
    cka,
    dispersion,
    head_rank_proxy,
    icl,
    intrinsic_dimension,
    linearity,
    logit_lens,
    neuron_entropy,
    saturation,
    singular_entropy,
)
from ckptlab.analyses.capture import Capture
from ckptlab.analyses.registry import (
    AnalysisDef,
    MetricValue,
    Need,
    get_analysis,
    registered_analyses,
)

__all__ = ["AnalysisDef", "Capture", "MetricValue", "Need", "get_analysis", "registered_analyses"]
