"""MLflow lineage: experiment = spec name, one parent run per ``ckptlab run``, one child run per
model, metrics logged with ``step`` = training step so the UI draws curves over training."""

from __future__ import annotations

import functools
import logging
import os
import re
import time
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ckptlab.spec import Spec

PACKAGES = ("torch", "transformers", "huggingface-hub", "ray", "duckdb", "mlflow", "ckptlab")
_BAD_KEY_CHARS = re.compile(r"[^\w\-./ ]")


def quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    # A tracking server that does not answer must not hold a run for minutes: MLflow's
    # defaults retry 7 times with a backoff factor of 2 and a 120 s timeout per request.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    import mlflow  # noqa: F401  -- mlflow configures its logger on import; quiet it after

    logging.getLogger("mlflow").setLevel(logging.WARNING)


def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def metric_key(
    label: str, analysis: str, metric: str, layer: int | None, input_set: str | None
) -> str:
    """``anisotropy/layer_3``; prefixed by the input set when a spec has several, and by the
    entry's label when it differs from the analysis name."""
    parts = [input_set] if input_set else []
    if label != analysis:
        parts.append(label)
    parts.append(metric)
    if layer is not None:
        parts.append(f"layer_{layer}")
    return _BAD_KEY_CHARS.sub("_", "/".join(parts))


def faceted_metric_name(metric: str, task: str | None, shots: int | None, seed: int | None) -> str:
    """An MLflow name for a value with ICL facets: ``category/accuracy/shots_4/seed_0``."""
    if task is None:
        return metric
    return f"{task}/{metric}/shots_{shots}/seed_{seed}"


def flatten(value, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            name = v.get("label") or v.get("name") or str(i)
            out |= flatten(v, f"{prefix}.{name}")
        return out
    return {prefix: str(value)[:6000]}


def artifact_root_for(tracking_uri: str) -> str | None:
    """A local sqlite store keeps artifacts beside it (not in the current directory)."""
    if tracking_uri.startswith("sqlite:///"):
        # A relative sqlite:///m.db is relative to the working directory, as for MLflow.
        db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


def reachable(tracking_uri: str, timeout: float = 5.0) -> str | None:
    """None when the tracking store answers, else why not (one line). Only HTTP servers can
    be away; a local store is a file."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout):
            return None
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        return f"MLflow at {tracking_uri} unreachable: {reason}"


def _guarded(method):
    """Lineage never stops a run: the first MLflow error marks it pending (``ckptlab sync``
    logs it later from DuckDB) and later calls do nothing."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.pending:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as err:
            first = (str(err).strip().splitlines() or [""])[0][:200]
            self.pending = f"MLflow at {self.tracking_uri}: {type(err).__name__}: {first}"
            return None

    return wrapper


class Lineage:
    def __init__(self, tracking_uri: str, spec: Spec, spec_text: str, run_id: str, code: str):
        quiet_mlflow()
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.spec = spec
        self.spec_text = spec_text
        self.run_id = run_id
        self.code = code
        self.parent_id: str | None = None
        self.children: dict[str, str] = {}
        self.multi_input = len(spec.input_sets) > 1
        self.pending: str | None = reachable(tracking_uri)  # why lineage is not logged now

    @_guarded
    def start(self) -> str:
        client = self.client
        experiment = client.get_experiment_by_name(self.spec.name)
        if experiment is None:
            root = artifact_root_for(self.tracking_uri)
            location = f"{root}/{self.spec.name}" if root else None
            experiment_id = client.create_experiment(self.spec.name, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        self.experiment_id = experiment_id
        tags = {
            "mlflow.runName": f"{self.spec.name}-{self.run_id[:8]}",
            "ckptlab.spec_hash": self.spec.spec_hash(),
            "ckptlab.run_id": self.run_id,
            "ckptlab.code_version": self.code,
            # What this run allowed to execute while loading (also params loading.*).
            "ckptlab.trust_remote_code": str(self.spec.loading.trust_remote_code).lower(),
            "ckptlab.allow_pickle_weights": str(self.spec.loading.allow_pickle_weights).lower(),
            **{f"version.{k}": v for k, v in package_versions().items()},
        }
        run = client.create_run(experiment_id, tags=tags)
        self.parent_id = run.info.run_id
        from mlflow.entities import Param

        params = flatten(self.spec.model_dump(mode="json", exclude={"description"}))
        items = [Param(k[:250], v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            client.log_batch(self.parent_id, params=items[i : i + 100])
        client.log_text(self.parent_id, self.spec_text, "spec.yaml")
        return self.parent_id

    def child(self, model: str, suite: str | None, size: str | None, seed: int | None) -> str:
        if model not in self.children:
            tags = {
                "mlflow.parentRunId": self.parent_id,
                "mlflow.runName": model,
                "ckptlab.model": model,
                "ckptlab.spec_hash": self.spec.spec_hash(),
            }
            for key, value in (("suite", suite), ("size", size), ("seed", seed)):
                if value is not None:
                    tags[f"ckptlab.{key}"] = str(value)
            run = self.client.create_run(self.experiment_id, tags=tags)
            self.children[model] = run.info.run_id
        return self.children[model]

    @_guarded
    def log_checkpoint(self, ref, commit: str, values: list[tuple]) -> None:
        """values: (label, analysis, metric, layer, input_set, value) of one checkpoint."""
        from mlflow.entities import Metric, RunTag

        run_id = self.child(ref.model, ref.suite, ref.size, ref.seed)
        now = int(time.time() * 1000)
        metrics = [
            Metric(
                metric_key(label, analysis, metric, layer, input_set if self.multi_input else None),
                value,
                now,
                ref.step,
            )
            for label, analysis, metric, layer, input_set, value in values
        ]
        tags = [RunTag(f"commit.{ref.revision}", commit)]
        for i in range(0, max(1, len(metrics)), 1000):
            self.client.log_batch(
                run_id, metrics=metrics[i : i + 1000], tags=tags if i == 0 else []
            )

    @_guarded
    def finish(self, status: str, counts: dict[str, int]) -> None:
        for key, value in counts.items():
            self.client.set_tag(self.parent_id, f"ckptlab.{key}", str(value))
        for child in self.children.values():
            self.client.set_terminated(child, status)
        # Last: a parent without it was cut short (ckptlab sync replaces such a run).
        self.client.set_tag(self.parent_id, "ckptlab.lineage", "complete")
        self.client.set_terminated(self.parent_id, status)
