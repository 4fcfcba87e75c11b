"""MLflow lineage: experiment = spec name, one parent run per ``ckptlab run``, one child run per
model, metrics logged with ``step`` = training step so the UI draws curves over training.

Owns: the experiment, run and metric names in MLflow (``metric_key``), what the parent and each
child run hold, and the pending state. Must not: stop a run over MLflow (the first error marks
the lineage pending, for ``ckptlab sync``), write to the results database, or import mlflow at
module level.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
import urllib.request
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ckptlab.errors import one_line
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


# Of a value with ICL facets (task x metric x shots x seed), MLflow gets the accuracy per task
# and shots, averaged over the label seeds; the other facets and the bookkeeping (n_prompts,
# chance_accuracy, ...) stay in DuckDB. Hundreds of keys per run make the UI unusable.
ICL_SUMMARY_METRICS = ("accuracy",)


@dataclass(frozen=True)
class Value:
    """One stored value, as lineage sees it (a `metrics` row with its cell's label)."""

    label: str  # the spec entry's label (its analysis name unless relabelled)
    analysis: str
    metric: str
    layer: int | None
    input_set: str | None
    value: float
    task: str | None = None
    shots: int | None = None
    task_seed: int | None = None


def mlflow_metrics(values: list[Value], multi_input: bool) -> dict[str, float]:
    """MLflow key -> value for one checkpoint: one key per (analysis, metric, layer), per
    lm-eval task and metric (``lm_eval/pico_python_mc/acc/shots_0``), and per ICL (task,
    shots) the accuracy averaged over label seeds (``category/accuracy/shots_4``).
    Per-item rows (neurons, lm-eval's documents) never reach it: they stay in DuckDB."""
    plain: dict[str, float] = {}
    facets: dict[str, list[float]] = {}
    for v in values:
        input_set = v.input_set if multi_input else None
        if v.task is None:
            plain[metric_key(v.label, v.analysis, v.metric, v.layer, input_set)] = v.value
        elif v.task_seed is None:  # lm_eval: one value per task (and shots), under its name
            shots = "" if v.shots is None else f"/shots_{v.shots}"
            name = f"{v.analysis}/{v.task}/{v.metric}{shots}"
            plain[metric_key(v.label, v.analysis, name, v.layer, input_set)] = v.value
        elif v.metric in ICL_SUMMARY_METRICS:
            name = f"{v.task}/{v.metric}/shots_{v.shots}"
            key = metric_key(v.label, v.analysis, name, v.layer, input_set)
            facets.setdefault(key, []).append(v.value)
    return plain | {key: sum(vs) / len(vs) for key, vs in facets.items()}


STAGE_STRIDE = 10_000_000  # steps per stage on the axis of a restarting suite without tokens


def mlflow_step(ref) -> int:
    """The x axis of a checkpoint's metrics: its training step. In a suite whose steps
    restart in a later stage (OLMo 2's stage-2 ingredients, CrystalCoder's phases) the step
    would go backwards, so there it is the millions of tokens seen since training began, or,
    where those are unknown, stage x 10,000,000 + step."""
    from ckptlab.catalog import SUITES, stage_rank

    suite = SUITES.get(ref.suite) if ref.suite else None
    if suite is None or not suite.stages_restart:
        return ref.step
    tokens = getattr(ref, "tokens_seen", None)
    if tokens is not None:
        return tokens // 1_000_000
    return stage_rank(getattr(ref, "stage", None)) * STAGE_STRIDE + ref.step


def _param_text(value) -> str | None:
    """A spec value as a person writes it: ``xs, s, m``, ``true``, ``64``; None is no param."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        parts = [_param_text(v) for v in value]
        return ", ".join(p for p in parts if p is not None)
    return str(value)


def flatten(value, prefix: str = "") -> dict[str, str]:
    """The spec as flat MLflow params: ``models.pico.sizes = xs, s``; list entries are named
    by their label, name or suite (their index when two share one)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        names = [v.get("label") or v.get("name") or v.get("suite") or v.get("repo") for v in value]
        out = {}
        for i, (v, name) in enumerate(zip(value, names, strict=True)):
            unique = name is not None and names.count(name) == 1
            out |= flatten(v, f"{prefix}.{name if unique else i}")
        return out
    text = _param_text(value)
    return {} if text is None else {prefix: text[:6000]}


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
            self.pending = f"MLflow at {self.tracking_uri}: {one_line(err, 300, first=True)}"
            return None

    return wrapper


def code_tags(spec: Spec) -> dict[str, str]:
    """``ckptlab.code.<analysis>`` = where a non-shipped analysis' code comes from and the
    sha256 of its source: which code made the run's rows (the cells table says it per row)."""
    from ckptlab.analyses.registry import get_analysis

    tags = {}
    for entry in spec.analyses:
        definition = get_analysis(entry.name)
        if not definition.shipped:
            digest = definition.origin.source_hash or "unknown"
            tags[f"ckptlab.code.{entry.name}"] = f"{definition.origin.describe()} sha256:{digest}"
    return tags


class Lineage:
    def __init__(self, tracking_uri: str, spec: Spec, spec_text: str, run_id: str, code: str):
        quiet_mlflow()
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.spec = spec
        self.spec_text = spec_text
        self.run_id = run_id
        self.code = code
        self.parent_id: str | None = None
        self.children: dict[str, str] = {}
        # model -> revision -> (step, tokens seen, commit sha, weight format, duplicate of):
        # each child's checkpoints.csv
        self.commits: dict[str, dict[str, tuple]] = {}
        self.multi_input = len(spec.input_sets) > 1
        self.pending: str | None = reachable(tracking_uri)  # why lineage is not logged now
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
        except Exception as err:  # e.g. a scheme MLflow has no store for: the run goes on
            self.client = None
            self.pending = self.pending or (
                f"MLflow at {tracking_uri}: {one_line(err, 300, first=True)}"
            )

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
        if self.spec.description:  # what the UI shows as the run's description
            tags["mlflow.note.content"] = self.spec.description
        tags |= code_tags(self.spec)
        run = client.create_run(experiment_id, tags=tags)
        self.parent_id = run.info.run_id
        from mlflow.entities import Param

        params = flatten(self.spec.model_dump(mode="json", exclude={"description", "storage"}))
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
    def log_checkpoint(
        self,
        ref,
        commit: str,
        values: list[Value],
        weight_format: str | None = None,
        duplicate_of: str | None = None,
    ) -> None:
        """One checkpoint's values, at ``step`` = its training step, in its model's run; its
        commit, weight format and twin revision go to the run's checkpoints.csv."""
        from mlflow.entities import Metric

        run_id = self.child(ref.model, ref.suite, ref.size, ref.seed)
        tokens = getattr(ref, "tokens_seen", None)
        self.commits.setdefault(ref.model, {})[ref.revision] = (
            ref.step, tokens, commit, weight_format, duplicate_of
        )  # fmt: skip
        now = int(time.time() * 1000)
        step = mlflow_step(ref)
        metrics = [
            Metric(key, value, now, step)
            for key, value in mlflow_metrics(values, self.multi_input).items()
        ]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])

    @_guarded
    def log_report(self, db: Path) -> int:
        """The run's figures (``ckptlab report`` of its spec) as the parent's artifacts under
        ``report/``; returns how many files. A figure that cannot be drawn never fails a run."""
        import tempfile

        from ckptlab.report import render_report

        with tempfile.TemporaryDirectory(prefix="ckptlab-report-") as tmp:
            try:
                files = render_report(db, Path(tmp), spec_name=self.spec.name)
            except Exception as err:  # e.g. the results file held right now
                logging.getLogger("ckptlab").warning("no report for MLflow: %s", err)
                return 0
            for path in files:
                self.client.log_artifact(self.parent_id, str(path), "report")
        return len(files)

    @_guarded
    def finish(self, status: str, counts: dict[str, float]) -> None:
        """counts: the run's summary (cells computed, cached, failed, ...), logged as the
        parent's metrics. Each model's revision -> commit table goes in as one artifact."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        summary = [Metric(key, float(value), now, 0) for key, value in counts.items()]
        self.client.log_batch(self.parent_id, metrics=summary)
        for model, child in self.children.items():
            rows = sorted(self.commits.get(model, {}).items(), key=lambda item: item[1][0])
            table = "revision,step,tokens_seen,commit,weight_format,duplicate_of\n" + "".join(
                f"{revision},{step},{'' if tokens is None else tokens},{commit},"
                f"{weight_format or ''},{twin or ''}\n"
                for revision, (step, tokens, commit, weight_format, twin) in rows
            )
            self.client.log_text(child, table, "checkpoints.csv")
            self.client.set_tag(child, "ckptlab.checkpoints", str(len(rows)))
            formats = sorted({row[3] for _, row in rows if row[3]})
            if formats:
                self.client.set_tag(child, "ckptlab.weight_format", ", ".join(formats))
            self.client.set_terminated(child, status)
        # Last: a parent without it was cut short (ckptlab sync replaces such a run).
        self.client.set_tag(self.parent_id, "ckptlab.lineage", "complete")
        self.client.set_terminated(self.parent_id, status)
