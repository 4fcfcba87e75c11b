"""Benchmark accuracy from lm-evaluation-harness, on the checkpoint the worker has loaded."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import random
from functools import cache
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ckptlab.analyses.capture import CheckpointContext
from ckptlab.analyses.registry import MetricValue, Need, analysis
from ckptlab.lazy import torch

# The tasks shipped for the pico suite (YAML + JSONL authored here; see make_pico_tasks.py).
SHIPPED_TASKS = Path(__file__).parent / "lm_eval_tasks"
INSTALL_HINT = "lm_eval needs lm-evaluation-harness: pip install 'ckptlab[bench]'"


class LmEvalParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Task names: those shipped with ckptlab (pico_python_mc, pico_python_cloze), those of
    # task_files, or lm-eval's own (lambada_openai, piqa, ...: they need hub access).
    tasks: list[str] = Field(min_length=1)
    # More task YAMLs (one task each); their relative data_files are read next to them.
    task_files: list[Path] = []
    num_fewshot: int | None = Field(None, ge=0)  # None: each task's own default
    limit: int | None = Field(None, ge=1)  # the first N documents of each task
    batch_size: int = Field(16, ge=1)
    # 0: no bootstrap (lm-eval's bootstrap starts a process pool inside the actor); stderr of
    # metrics averaged over documents is then lm-eval's closed form, from the per-doc values.
    bootstrap_iters: int = Field(0, ge=0)
    fewshot_seed: int = 1234  # lm-eval's default seed of the few-shot sampler
    log_samples: bool = False  # per-document rows (DuckDB only, never MLflow)

    @field_validator("tasks")
    @classmethod
    def _distinct(cls, tasks: list[str]) -> list[str]:
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be distinct, got {tasks}")
        return tasks

    @field_validator("task_files")
    @classmethod
    def _yaml_files(cls, files: list[Path]) -> list[Path]:
        # Whether each exists is the spec's check: a relative one lies next to the spec.
        for file in files:
            if file.suffix not in (".yaml", ".yml"):
                raise ValueError(f"task_files: {file} is not a YAML file")
        return files


def _require_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return lm_eval


# ------------------------------------------------------------------------------ the tasks


@cache
def task_manager(include_defaults: bool):
    """lm-eval's task index, built once per process (a worker runs many checkpoints): over
    ckptlab's shipped tasks, plus lm-eval's own ~10k YAMLs only when a task needs them
    (indexing those takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(SHIPPED_TASKS), include_defaults=include_defaults)


def _read_task_yaml(file: Path, **options) -> dict:
    """lm-eval's YAML loader (it knows ``!function``); a file it cannot read is a one-line
    ValueError naming the file, as a bad spec."""
    import yaml
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        config = load_yaml(file, **options)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"task file {file}: not valid YAML{where}") from None
    except OSError as err:
        raise ValueError(f"task file {file}: {err.strerror or err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"task file {file}: expected a mapping of task fields")
    return config


def local_tasks(params: LmEvalParams) -> dict[str, Path]:
    """Task name -> YAML of the tasks ckptlab ships and of the spec's ``task_files`` (which
    win over a shipped task of the same name: they are named explicitly)."""
    shipped = task_manager(False).task_index
    found = {name: Path(e.yaml_path) for name, e in shipped.items() if e.yaml_path}
    for file in params.task_files:
        name = _read_task_yaml(file, resolve_func=False, recursive=False).get("task")
        if not isinstance(name, str):
            raise ValueError(f"task_files: {file} has no task name (a 'task:' field)")
        found[name] = file.resolve()
    return found


def _manager_for(params: LmEvalParams):
    local = local_tasks(params)
    return task_manager(not all(name in local for name in params.tasks))


def _data_files(config: dict, folder: Path) -> dict[str, str] | None:
    """The config's ``dataset_kwargs.data_files`` as absolute paths (relative ones are read
    next to the YAML), or None when the task reads a hub dataset."""
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        return None
    if isinstance(files, str | list):
        files = {"test": files}
    resolved = {}
    for split, value in files.items():
        if isinstance(value, list):
            raise ValueError(f"task {config.get('task')!r}: one data file per split, please")
        path = Path(value).expanduser()
        resolved[split] = str(path if path.is_absolute() else (folder / path).resolve())
    return resolved


def task_configs(params: LmEvalParams, *, resolve_functions: bool) -> list[str | dict]:
    """What lm-eval is asked to load: a task's name, or, for a task with local data files, its
    YAML config read here with the data files made absolute (lm-eval would read them
    relative to the process' cwd, which differs between a laptop and a Ray worker)."""
    local = local_tasks(params)
    known = _manager_for(params).task_index
    loaded: list[str | dict] = []
    for name in params.tasks:
        if name not in local:
            if name not in known:
                raise ValueError(f"unknown lm-eval task {name!r}")
            loaded.append(name)  # one of lm-eval's: it reads its own data (hub access)
            continue
        config = _read_task_yaml(local[name], resolve_func=resolve_functions)
        files = _data_files(config, local[name].parent)
        if files is None:
            loaded.append(config)
            continue
        config["dataset_kwargs"] = {**config["dataset_kwargs"], "data_files": files}
        loaded.append(config)
    return loaded


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _relative_to(value, folder: Path):
    """``value`` with every string naming a path under ``folder`` made relative to it."""
    if isinstance(value, dict):
        return {k: _relative_to(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_to(v, folder) for v in value]
    prefix = f"{folder.resolve()}{os.sep}"
    if isinstance(value, str) and value.startswith(prefix):
        return value[len(prefix) :]
    return value


def task_identity(params: LmEvalParams) -> dict:
    """The plan's context of an lm_eval cell: lm-eval's version, and per task its version and
    a hash of its resolved config with each local data file replaced by the hash of its
    bytes. A changed task, its data or lm-eval itself means new cells."""
    try:
        lm_eval = _require_lm_eval()
    except ImportError as err:
        raise ValueError(str(err)) from None
    identities = {}
    for name, config in zip(
        params.tasks, task_configs(params, resolve_functions=False), strict=True
    ):
        if isinstance(config, str):  # lm-eval's own task: its YAML file, as lm-eval has it
            entry = _manager_for(params).task_index[name]
            text = Path(entry.yaml_path).read_bytes() if entry.yaml_path else name.encode()
            identities[name] = {"version": None, "config_sha256": _sha256(text)}
            continue
        config = copy.deepcopy(config)
        files = (config.get("dataset_kwargs") or {}).get("data_files") or {}
        for split, path in files.items():
            try:
                files[split] = "sha256:" + _sha256(Path(path).read_bytes())
            except OSError as err:
                raise ValueError(f"task {name!r}: data file {path}: {err.strerror}") from None
        # Unresolved ``!function`` entries read as absolute paths next to the YAML: relative,
        # a task hashes the same wherever its folder is (a laptop, a job's working dir).
        config = _relative_to(config, local_tasks(params)[name].parent)
        identities[name] = {
            "version": (config.get("metadata") or {}).get("version"),
            "config_sha256": _sha256(json.dumps(config, sort_keys=True, default=str).encode()),
        }
    return {"lm_eval_version": lm_eval.__version__, "tasks": identities}


def data_files(params: LmEvalParams) -> list[Path]:
    """The local data files of the spec's ``task_files`` (what ``ckptlab submit`` carries
    next to them; the shipped tasks are installed with ckptlab)."""
    found = []
    for file in params.task_files:
        config = _read_task_yaml(file, resolve_func=False)
        found += [Path(path) for path in (_data_files(config, file.parent) or {}).values()]
    return found


# ------------------------------------------------------------------------------ the run


@contextlib.contextmanager
def _rng_restored():
    """lm-eval seeds Python's, NumPy's and torch's global generators; the analyses after it
    in the same unit must see them as they were."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def _quiet():
    """lm-eval and datasets log a warning about the model instance and draw progress bars per
    task; in a worker's log, across hundreds of checkpoints, that is noise. (tqdm reads
    TQDM_DISABLE when it is imported, long before this: its bars go to a swallowed stderr;
    log handlers keep the real one, so warnings that matter still show.)"""
    loggers = [logging.getLogger(n) for n in ("lm-eval", "lm_eval", "datasets", "evaluate")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _no_environment_report(evaluator):
    """simple_evaluate ends by describing the environment (torch's collect_env: a `pip list`
    and driver queries in subprocesses, ~0.5 s, most of a pico checkpoint's evaluation).
    ckptlab records the versions once per run (MLflow tags) and never reads this part of the
    results, so per checkpoint it is skipped."""
    original = evaluator.add_env_info
    evaluator.add_env_info = lambda results: None
    try:
        yield
    finally:
        evaluator.add_env_info = original


def evaluate(model, tokenizer, params: LmEvalParams) -> dict:
    """lm-eval's ``simple_evaluate`` on a model instance; returns its results dict (with the
    per-document samples)."""
    lm_eval = _require_lm_eval()
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    device = next(model.parameters()).device
    with _quiet(), _rng_restored(), _no_environment_report(evaluator):
        # For an instance, simple_evaluate ignores batch_size, device and dtype: they go to
        # HFLM. The tokenizer is a copy: HFLM adds a pad token to the one it is given.
        lm = HFLM(
            pretrained=model,
            tokenizer=copy.deepcopy(tokenizer),
            batch_size=params.batch_size,
            device=str(device),
            dtype=next(model.parameters()).dtype,
        )
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=task_configs(params, resolve_functions=True),
            task_manager=_manager_for(params),
            num_fewshot=params.num_fewshot,
            limit=params.limit,
            bootstrap_iters=params.bootstrap_iters,
            fewshot_random_seed=params.fewshot_seed,
            log_samples=True,
        )


def _mean_aggregated(results: dict, task: str) -> set[str]:
    """Metrics that a task averages over documents (their stderr has a closed form)."""
    metric_list = (results.get("configs", {}).get(task) or {}).get("metric_list") or []
    means = {m["metric"] for m in metric_list if m.get("aggregation") == "mean"}
    return means or {"acc", "acc_norm"}


def rows_of(results: dict, params: LmEvalParams) -> list[MetricValue]:
    """One row per task x metric (``acc``, ``acc_norm``, ``perplexity``, ...; a filter other
    than lm-eval's "none" joins the name as ``metric/filter``), its ``<metric>_stderr`` where
    there is one, ``n_docs``; per-document ``doc_<metric>`` rows (item = doc_id) on request."""
    from lm_eval.api.metrics import mean_stderr

    rows: list[MetricValue] = []
    for task, values in results["results"].items():
        shots = results.get("n-shot", {}).get(task)
        samples = results.get("samples", {}).get(task, [])
        means = _mean_aggregated(results, task)
        stderrs = {}
        for key, value in values.items():
            if "," not in key or not isinstance(value, int | float):
                continue
            metric, filter_name = key.split(",", 1)
            name = metric if filter_name == "none" else f"{metric}/{filter_name}"
            if metric.endswith("_stderr"):
                stderrs[name] = float(value)
                continue
            rows.append(MetricValue(name, float(value), task=task, shots=shots))
            per_doc = [float(s[metric]) for s in samples if s.get("filter") == filter_name]
            if params.bootstrap_iters == 0 and metric in means and len(per_doc) > 1:
                # lm-eval gives no stderr without bootstrap iterations, although for a mean
                # its own formula is closed form: the same function, on the same values.
                stderrs.setdefault(f"{metric}_stderr" + name[len(metric) :], mean_stderr(per_doc))
        rows += [MetricValue(k, v, task=task, shots=shots) for k, v in sorted(stderrs.items())]
        n_docs = results.get("n-samples", {}).get(task, {}).get("effective", len(samples))
        rows.append(MetricValue("n_docs", float(n_docs), task=task, shots=shots))
        if params.log_samples:
            for sample in samples:
                for metric in sample.get("metrics", []):
                    rows.append(
                        MetricValue(
                            f"doc_{metric}",
                            float(sample[metric]),
                            task=task,
                            shots=shots,
                            item=int(sample["doc_id"]),
                        )
                    )
    return rows


@analysis(
    name="lm_eval",
    version=1,
    needs={Need.MODEL},
    params=LmEvalParams,
    context=task_identity,
    files=data_files,
)
def lm_eval(context: CheckpointContext, params: LmEvalParams) -> list[MetricValue]:
    """Benchmark accuracy with lm-evaluation-harness (Gao et al., "A framework for few-shot
    language model evaluation"; Pythia's evals, Biderman et al. 2023), run by
    ``simple_evaluate`` on the model instance the worker has loaded: no second download, no
    second load.

    Multiple choice: acc = mean over documents of [argmax_i sum_t log p(c_i,t | ctx, c_i,<t)
    = gold], acc_norm the same with each sum divided by the byte length of c_i. Cloze
    (loglikelihood): acc = mean of [the target is the greedy continuation], perplexity =
    exp(-mean log p(target | ctx)). Rows per task (facet ``task``, ``shots`` = num_fewshot):
    every metric lm-eval reports, ``<metric>_stderr`` (lm-eval's; with bootstrap_iters = 0 the
    closed form sqrt(var/n) of per-document means), ``n_docs``, and with log_samples the
    per-document values as ``doc_<metric>`` (item = doc_id). The cell key holds lm-eval's
    version and each task's version and config hash.
    """
    model, tokenizer = context.require("model"), context.require("tokenizer")
    return rows_of(evaluate(model, tokenizer, params), params)
