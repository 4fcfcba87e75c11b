"""Shipped analyses. Importing this package registers each of them (one file per analysis)."""

from analyses import anisotropy, saturation, singular_entropy  # noqa: F401
from analyses.capture import Capture
from analyses.registry import (
    AnalysisDef,
    MetricValue,
    Need,
    get_analysis,
    registered_analyses,
)

__all__ = ["AnalysisDef", "Capture", "MetricValue", "Need", "get_analysis", "registered_analyses"]
