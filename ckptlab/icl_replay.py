"""The exact prompts of a stored ``icl`` cell, rebuilt from what the results DB recorded: the
cell's params (task specs, seeds, shots, n_test), its checkpoint's tokenizer (the stored commit)
and the task data, checked against the fingerprint stored with the cell.

Owns: ``stored_prompts`` and ``ReplayError``. Must not: write to the results database, or
rebuild from data or a checkpoint other than the run's: a changed fingerprint or a moved
revision is an error, and the tokenizer comes from the local cache only.
"""

from __future__ import annotations

import json
from pathlib import Path

from ckptlab.analyses.icl import IclParams
from ckptlab.analyses.icl_tasks.tasks import (
    PromptBatch,
    TaskDataError,
    build_instance,
    load_task_data,
    make_prompts,
)
from ckptlab.hub import fetch_snapshot, load_tokenizer
from ckptlab.results import ResultStore
from ckptlab.spec import resolved_paths


class ReplayError(ValueError):
    pass


def stored_prompts(
    store: ResultStore,
    cell_key: str,
    task: str,
    shots: int,
    seed: int | None,
    hub_dir: Path,
    spec_folder: Path = Path("."),
) -> tuple[list[str], PromptBatch]:
    """(candidate labels, the prompts) of one task x shots x seed of a stored icl cell. A
    task file the cell names by a relative path lies in ``spec_folder`` (its spec's)."""
    rows = store.query(
        "SELECT c.params_json, ch.model, ch.revision, c.commit_sha FROM cells c"
        " JOIN checkpoints ch USING (commit_sha) WHERE c.cell_key = ? AND c.analysis = 'icl'",
        [cell_key],
    )
    if rows.is_empty():
        raise ReplayError(f"no icl cell with key {cell_key!r}")
    params_json, model, revision, commit = rows.row(0)
    stored = json.loads(params_json)
    fingerprints = stored.pop("context", {}).get("task_data", {})
    params = resolved_paths(IclParams.model_validate(stored), spec_folder)
    specs = {t.label: t for t in params.tasks}
    if task not in specs:
        raise ReplayError(f"task {task!r} is not in the cell (tasks: {', '.join(specs)})")
    if shots not in params.shots:
        raise ReplayError(f"shots {shots} is not in the cell (shots: {params.shots})")
    seed = params.seeds[0] if seed is None else seed
    if seed not in params.seeds:
        raise ReplayError(f"seed {seed} is not in the cell (seeds: {params.seeds})")
    try:
        data = load_task_data(specs[task], hub_dir)
    except TaskDataError as err:
        raise ReplayError(f"task {task!r}: {err}") from None
    if fingerprints.get(task) not in (None, data.fingerprint()):
        raise ReplayError(f"task {task!r}: its data changed since the run (fingerprint differs)")
    folder, found = fetch_snapshot(model, revision, hub_dir, local_only=True)
    if found != commit:
        raise ReplayError(f"{model}@{revision} is now {found[:12]}, the cell used {commit[:12]}")
    tokenizer = load_tokenizer(folder, trust_remote_code=False)
    instance = build_instance(specs[task], data, tokenizer, seed)
    _, batches = make_prompts(instance, tokenizer, params.shots, params.n_test, seed)
    return instance.candidates, next(b for b in batches if b.shots == shots)
