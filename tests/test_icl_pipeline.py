"""ICL end to end on a default-recipe pico build: the pipeline stores the probe's rows, the
prompts replay from the stored cell, and the mixture gives in-context learning to find:
`category` accuracy with demonstrations above chance and above zero-shot (asserted from the
run's own numbers, averaged over task seeds)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console

from ckptlab.icl_replay import stored_prompts
from ckptlab.orchestrator.executors import InlineExecutor
from ckptlab.orchestrator.runner import make_plan, run_plan
from ckptlab.pico.build import PicoRecipe, build_pico
from ckptlab.results import ResultStore
from ckptlab.spec import parse_spec

STEPS = [0, 500, 1000]
SHOTS = [0, 1, 4]
SEEDS = [0, 1, 2]
N_TEST = 128
TASK = "category"


@pytest.mark.slow
def test_icl_rises_above_chance_on_a_default_pico_build(tmp_path: Path):
    hub = tmp_path / "hub"
    build_pico(hub, ("s",), (0,), PicoRecipe())  # the recipe `ckptlab pico build` uses
    spec = {
        "name": "icl-test",
        "models": [{"suite": "pico", "sizes": ["s"], "steps": STEPS}],
        "analyses": [
            {
                "name": "icl",
                "params": {
                    "shots": SHOTS,
                    "n_test": N_TEST,
                    "seeds": SEEDS,
                    "tasks": [{"data": TASK}],
                },
            }
        ],
    }
    db = tmp_path / "results.duckdb"
    parsed = parse_spec(spec)
    summary = run_plan(
        make_plan(parsed, db, hub),
        yaml.safe_dump(spec),
        db,
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        hub,
        InlineExecutor(parsed.resources),
        Console(file=io.StringIO()),
    )
    assert summary.cells_failed == 0 and summary.cells_computed == len(STEPS)
    rows = ResultStore(db).query(
        "SELECT step, shots, task_seed, metric, value FROM results WHERE task = ?", [TASK]
    )
    assert rows.height == len(STEPS) * len(SHOTS) * len(SEEDS) * 9  # 9 metrics each
    value = {(st, k, s, m): v for st, k, s, m, v in rows.iter_rows()}
    chance = value[(1000, 0, 0, "chance_accuracy")]
    assert chance == pytest.approx(1 / 6)

    def accuracy(step: int, shots: int) -> float:  # mean over task seeds
        return float(np.mean([value[(step, shots, s, "accuracy")] for s in SEEDS]))

    n = N_TEST * len(SEEDS)
    margin = 4 * math.sqrt(chance * (1 - chance) / n)  # 4 binomial standard errors
    best = max((accuracy(st, k), st, k) for st in STEPS[1:] for k in SHOTS if k)
    assert best[0] > chance + margin, best
    assert best[0] > accuracy(best[1], 0) + margin, (best, accuracy(best[1], 0))
    # Disjoint split: a query is never among its demonstrations.
    assert all(value[(st, k, s, "query_seen_rate")] == 0 for st, k, s, _ in value)

    # The prompts are reproducible from the stored cell: rebuilt, they give the stored counts.
    cell = (
        ResultStore(db)
        .query("SELECT DISTINCT cell_key FROM results WHERE step = 1000 AND task = ?", [TASK])
        .item()
    )
    tokenizer_ids = _label_token_ids(hub)
    for k in SHOTS:
        for seed in SEEDS:
            candidates, batch = stored_prompts(ResultStore(db), cell, TASK, k, seed, hub)
            assert len(candidates) == 6 and len(batch.prompts) == N_TEST
            longest = max(map(len, batch.prompts)) + max(len(tokenizer_ids(c)) for c in candidates)
            assert longest == value[(1000, k, seed, "max_prompt_tokens")]


def _label_token_ids(hub: Path):
    from ckptlab.hub import fetch_snapshot, load_tokenizer

    folder, _ = fetch_snapshot("pico/pico-s", "step1000", hub, local_only=True)
    tokenizer = load_tokenizer(folder, trust_remote_code=False)
    return lambda label: tokenizer(" " + label, add_special_tokens=False)["input_ids"]
