"""The records a unit produces. Plain dataclasses: workers build them without DuckDB, the
driver (the only writer) stores them.

Owns: ``CheckpointRow``, ``CellRow``, ``MetricRow``, ``UnitRow`` and ``FailureRow``. Must not:
import DuckDB, torch or another ckptlab module: a worker builds them and Ray sends them to the
driver.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckpointRow:
    model: str
    revision: str
    step: int
    commit_sha: str
    suite: str | None
    size: str | None
    seed: int | None
    weights_sha256: str | None = None  # the weight files' digest: identical payloads match
    tokens_seen: int | None = None  # the suite's axis (ckptlab.catalog); None: unknown
    stage: str | None = None  # the training stage the revision names ('stage2')
    # How the weights were stored: safetensors | safetensors-sharded | pickle | pickle-sharded.
    weight_format: str | None = None
    model_type: str | None = None  # config.json's model_type (the architecture table's key)
    tied_head: bool | None = None  # the LM head is the input embedding matrix


@dataclass(frozen=True)
class CellRow:
    cell_key: str
    commit_sha: str
    analysis: str
    analysis_version: int
    params_json: str
    params_hash: str
    input_set_id: str | None
    device: str
    dtype: str
    seconds: float
    code_source: str | None = None  # a plug-in's origin ("file my_metric.py"); None: shipped
    code_hash: str | None = None  # sha256 of the plug-in's source


@dataclass(frozen=True)
class MetricRow:
    cell_key: str
    layer: int | None
    metric: str
    value: float
    item: int | None = None
    task: str | None = None
    shots: int | None = None
    task_seed: int | None = None


@dataclass(frozen=True)
class UnitRow:
    """Where and how long one checkpoint's unit ran: download, load and compute seconds."""

    model: str
    revision: str
    commit_sha: str
    node: str
    device: str
    fetch_seconds: float  # waiting for files in the unit (0 when prefetched and done)
    load_seconds: float
    compute_seconds: float
    started_at: float  # epoch seconds
    finished_at: float
    prefetch_started_at: float | None
    prefetch_finished_at: float | None
    cells: int
    failed: int
    batch_size: int | None = None  # smaller than the spec's when a pass ran out of memory


@dataclass(frozen=True)
class FailureRow:
    model: str
    revision: str
    step: int
    commit_sha: str | None
    analysis: str | None
    input_set_id: str | None
    error: str
    cell_key: str | None = None  # None when the checkpoint had no commit to key it
