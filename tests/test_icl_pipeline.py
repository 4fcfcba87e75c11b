"""ICL end to end on a default-recipe pico build: the pipeline stores the probe's rows and the
mixture gives in-context learning to find (asserted from the run's own numbers)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console

from ckptlab.icl.replay import stored_prompts
from ckptlab.pico.build import PicoRecipe, build_pico
from ckptlab.results import ResultStore
from ckptlab.spec import parse_spec
from orchestrator.executors import InlineExecutor
from orchestrator.runner import make_plan, run_plan

SHOTS = [0, 2, 8, 16]
N_TEST = 256


@pytest.mark.slow
def test_icl_rises_above_chance_on_a_default_pico_build(tmp_path: Path):
    hub = tmp_path / "hub"
    build_pico(hub, ("s",), (0,), PicoRecipe())  # the recipe `ckptlab pico build` uses
    spec = {
        "name": "icl-test",
        "models": [{"suite": "pico", "sizes": ["s"], "steps": [0, 300, 1000]}],
        "analyses": [
            {
                "name": "icl",
                "params": {
                    "shots": SHOTS,
                    "n_test": N_TEST,
                    "tasks": [{"data": "category", "variant": "memo_random"}],
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
    assert summary.cells_failed == 0 and summary.cells_computed == 3
    rows = ResultStore(db).query(
        "SELECT step, shots, metric, value FROM results WHERE task = 'category/memo_random'"
    )
    assert rows.height == 3 * len(SHOTS) * 9  # 3 checkpoints x shots x 9 metrics
    value = {(s, k, m): v for s, k, m, v in rows.iter_rows()}
    chance = value[(1000, 0, "chance_accuracy")]
    assert chance == pytest.approx(1 / 6)
    # Above chance by 4 binomial standard errors somewhere with demonstrations ...
    margin = 4 * math.sqrt(chance * (1 - chance) / N_TEST)
    best = max((value[(s, k, "accuracy")], s, k) for s in (300, 1000) for k in SHOTS if k)
    assert best[0] > chance + margin, best
    # ... where zero-shot cannot be: the random labels are drawn per seed, unseen in training.
    assert value[(best[1], 0, "accuracy")] < chance + margin
    # Demonstrations contain the query's input at the rate sampling predicts: 1 - (5/6)^L.
    for k in SHOTS:
        expected = 1 - (5 / 6) ** k
        assert value[(1000, k, "query_seen_rate")] == pytest.approx(expected, abs=0.08)
    # The prompts are reproducible from the stored cell: rebuilt, they give the stored counts.
    cell = (
        ResultStore(db)
        .query(
            "SELECT DISTINCT cell_key FROM results"
            " WHERE step = 1000 AND task = 'category/memo_random'"
        )
        .item()
    )
    for k in SHOTS:
        candidates, batch = stored_prompts(
            ResultStore(db), cell, "category/memo_random", k, None, hub
        )
        assert len(candidates) == 6 and len(batch.prompts) == N_TEST
        longest_label = max(len(c) for c in candidates_token_ids(candidates, hub))
        assert max(map(len, batch.prompts)) + longest_label == value[(1000, k, "max_prompt_tokens")]
        assert np.mean(batch.query_seen) == pytest.approx(value[(1000, k, "query_seen_rate")])


def candidates_token_ids(candidates: list[str], hub: Path) -> list[list[int]]:
    from ckptlab.hub import fetch_snapshot, load_tokenizer

    folder, _ = fetch_snapshot("pico/pico-s", "step1000", hub, local_only=True)
    tokenizer = load_tokenizer(folder, trust_remote_code=False)
    return [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in candidates]
