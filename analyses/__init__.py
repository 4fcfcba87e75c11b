"""Shipped analyses. Importing this package registers each of them (one file per analysis).

Owns: the list of shipped analyses and the names re-exported here. Must not: import
``orchestrator/`` or a module of ``ckptlab/`` above its foundations (``spec``, ``results``,
``report``, ...: tests/test_layout.py), or torch at module level (``ckptlab analyses`` imports
every file: name torch through ``ckptlab.lazy``).
"""

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
