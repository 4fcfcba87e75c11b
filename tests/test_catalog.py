"""The suite catalog: every recorded ref list parses into (step, tokens seen, stage, seed) as
the suites' sources say; the token selectors on real schedules; ``ckptlab suites``; and a
non-Pythia suite planned from a laid-out hub cache (offline) and from a hub of our own
(tests/fake_hub.py), without a weight file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptlab.catalog import (
    SUITES,
    Checkpoint,
    format_tokens,
    parse_token_count,
    pythia_schedule,
)
from ckptlab.cli import app
from ckptlab.orchestrator.checkpoints import UNLISTED
from ckptlab.orchestrator.plan import build_plan
from ckptlab.spec import SpecError, parse_spec, select_checkpoints, select_steps

from fake_hub import FakeHub

REFS = Path(__file__).parent / "data" / "refs"
B, T = 10**9, 10**12
PYTHIA_STEP = 1024 * 2048


def recorded(name: str) -> list[str]:
    """A recorded ref list: one name a line, '#' lines are its sources."""
    lines = (REFS / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def parsed(suite: str, name: str, size: str) -> dict[str, Checkpoint]:
    return {n: c for n in recorded(name) if (c := SUITES[suite].parse(n, size)) is not None}


# --------------------------------------------------------------------------- parsing


# (suite, size, ref list, names that are no checkpoint, {revision: (step, tokens, stage, seed)})
# The expected values are worked out from each suite's source, not from the parser.
CASES = [
    (
        "pythia",
        "160m",
        "EleutherAI--pythia-160m.txt",
        {"main"},
        {
            "step0": (0, 0, None, None),
            "step512": (512, 512 * 2_097_152, None, None),
            "step1000": (1000, 2_097_152_000, None, None),
            "step143000": (143000, 299_892_736_000, None, None),  # "299,892,736,000 tokens"
        },
    ),
    (
        "pythia",
        "410m",
        "EleutherAI--pythia-410m-seed3.txt",
        {"main"},
        {
            "step64": (64, 64 * 2_097_152, None, None),
            "step7000": (7000, 7000 * PYTHIA_STEP, None, None),
        },
    ),
    (
        "pythia-v0",
        "1.4b",
        "EleutherAI--pythia-1.4b-v0.txt",
        {"main"},
        # 4M-token batches, labels doubled: step1000 = 500 optimizer steps x 4,194,304 tokens
        {
            "step1000": (1000, 500 * 4_194_304, None, None),
            "step143000": (143000, 71500 * 4_194_304, None, None),
        },
    ),
    (
        "olmo",
        "7b",
        "allenai--OLMo-7B-hf.txt",
        {"main"},
        {
            "step0-tokens0B": (0, 0, None, None),
            "step2000-tokens9B": (2000, 9 * B, None, None),
            "step452000-tokens2000B": (452000, 2 * T, None, None),
            "step557000-tokens2464B": (557000, 2464 * B, None, None),
        },
    ),
    (
        "olmo",
        "1.7-7b",
        "allenai--OLMo-1.7-7B-hf.txt",
        {"main", "nitro"},
        {
            "step73100-tokens306B": (73100, 306 * B, None, None),
            "step408923-tokens1714B": (408923, 1714 * B, None, None),
            "step651581-tokens2731B": (651581, 2731 * B, None, None),
        },
    ),
    (
        "olmo2",
        "7b",
        "allenai--OLMo-2-1124-7B.txt",
        {"main"},
        {
            "stage1-step150-tokens1B": (150, 1 * B, "stage1", None),
            "stage1-step928646-tokens3896B": (928646, 3896 * B, "stage1", None),
            # stage 2 starts from stage 1's last checkpoint: 3896B + the name's tokens
            "stage2-ingredient1-step1000-tokens5B": (1000, 3901 * B, "stage2", 1),
            "stage2-ingredient3-step11931-tokens50B": (11931, 3946 * B, "stage2", 3),
        },
    ),
    (
        "smollm2",
        "1.7b",
        "HuggingFaceTB--SmolLM2-1.7B-intermediate-checkpoints.txt",
        {"main"},
        {
            "step-125000": (125000, 125000 * 2_097_152, None, None),  # ~262B ("~250B")
            "step-5000000": (5000000, 5000000 * 2_097_152, None, None),
        },
    ),
    (
        "smollm3",
        "3b",
        "HuggingFaceTB--SmolLM3-3B-checkpoints.txt",
        {"main"},
        {
            "stage1-step-40000": (40000, 94_371_840_000, "stage1", None),  # "94.4B tokens"
            "stage2-step-3480000": (3480000, 3480000 * 2_359_296, "stage2", None),
            "stage3-step-4720000": (4720000, 4720000 * 2_359_296, "stage3", None),
        },
    ),
    (
        "stanford-gpt2",
        "small",
        "stanford-crfm--alias-gpt2-small-x21.txt",
        {"main"},
        {
            "checkpoint-0": (0, 0, None, None),
            "checkpoint-750": (750, 750 * 512 * 1024, None, None),
            "checkpoint-400000": (400000, 209_715_200_000, None, None),
        },
    ),
    (
        "amber",
        "7b",
        "LLM360--Amber.txt",
        {"main"},
        {"ckpt_000": (0, None, None, None), "ckpt_359": (359, None, None, None)},
    ),
    (
        "crystalcoder",
        "7b",
        "LLM360--CrystalCoder.txt",
        {"main"},
        {
            "CrystalCoder_phase1_checkpoint_055500": (55500, None, "phase1", None),
            "CrystalCoder_phase3_checkpoint_027728": (27728, None, "phase3", None),
        },
    ),
]


@pytest.mark.parametrize(
    ("suite", "size", "refs", "odd", "expected"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_every_recorded_ref_list_parses(suite, size, refs, odd, expected):
    names = recorded(refs)
    checkpoints = parsed(suite, refs, size)
    assert set(names) - set(checkpoints) == odd  # every other name is a checkpoint
    for revision, (step, tokens, stage, seed) in expected.items():
        c = checkpoints[revision]
        assert (c.step, c.tokens, c.stage, c.seed) == (step, tokens, stage, seed), revision
    # One axis: in training order, tokens seen never go down (ties: OLMo 2's ingredients).
    ordered = SUITES[suite].from_revisions(names, size)
    tokens = [c.tokens for c in ordered]
    if None not in tokens:
        assert tokens == sorted(tokens)


def test_the_ref_lists_hold_what_their_sources_say():
    assert len(parsed("pythia", "EleutherAI--pythia-160m.txt", "160m")) == 154
    assert len(parsed("pythia-v0", "EleutherAI--pythia-1.4b-v0.txt", "1.4b")) == 143
    olmo2 = parsed("olmo2", "allenai--OLMo-2-1124-7B.txt", "7b")
    assert sum(c.stage == "stage2" for c in olmo2.values()) == 3 * 12
    # Every stage-2 checkpoint comes after every stage-1 checkpoint on the tokens axis.
    stage1 = max(c.tokens for c in olmo2.values() if c.stage == "stage1")
    assert min(c.tokens for c in olmo2.values() if c.stage == "stage2") > stage1
    smol3 = parsed("smollm3", "HuggingFaceTB--SmolLM3-3B-checkpoints.txt", "3b")
    assert [sum(c.stage == f"stage{k}" for c in smol3.values()) for k in (2, 3)] == [19, 13]


def test_pythia_seeds_are_repos_and_v0_steps_are_labels():
    pythia = SUITES["pythia"]
    assert pythia.repo_id("410m", seed=3) == "EleutherAI/pythia-410m-seed3"
    v0 = SUITES["pythia-v0"]
    assert v0.repo_id("1.4b", deduped=True) == "EleutherAI/pythia-1.4b-deduped-v0"
    assert v0.optimizer_step("1.4b", 1000) == 500  # 4M batch: the hub's labels are doubled
    assert v0.optimizer_step("70m", 1000) == 1000
    # The tokens are the same either way: 1000 labelled steps x 2M = 500 real steps x 4M.
    assert v0.parse("step1000", "1.4b").tokens == v0.parse("step1000", "70m").tokens


def test_olmo2_names_without_a_stage_prefix_are_stage_1():
    olmo2 = SUITES["olmo2"]
    assert olmo2.parse("step1000-tokens5B", "7b") == Checkpoint(
        "step1000-tokens5B", 1000, 5 * B, "stage1", None
    )
    # 13B: stage 1 ends at 5001B; ingredient 4 is its 300B stage-2 run (allenai/OLMo #816)
    c = olmo2.parse("stage2-ingredient4-step35773-tokens300B", "13b")
    assert (c.step, c.tokens, c.stage, c.seed) == (35773, 5301 * B, "stage2", 4)
    assert olmo2.parse("stage3-step10-tokens1B", "7b").tokens is None  # no known offset


def test_unconfirmed_tokens_are_none_and_phases_order_by_stage():
    assert SUITES["smollm2"].parse("step-160000", "360m").tokens is None
    assert SUITES["smollm2"].parse("step-240000", "135m").tokens == 240000 * 1_048_576
    crystal = SUITES["crystalcoder"].from_revisions(recorded("LLM360--CrystalCoder.txt"), "7b")
    assert [c.stage for c in crystal] == ["phase1", "phase2", "phase3"]  # not by step


def test_tinyllama_is_one_repo_per_checkpoint():
    suite = SUITES["tinyllama"]
    repos = recorded("TinyLlama.txt")
    found = {r: suite.parse_repo(r) for r in repos}
    assert found.pop("TinyLlama/TinyLlama-1.1B-Chat-v1.0") is None
    assert [c.step for c in found.values()] == [
        k * 1000 for k in (50, 240, 480, 715, 955, 1195, 1431)
    ]
    one_t = found["TinyLlama/TinyLlama-1.1B-intermediate-step-480k-1T"]
    assert (one_t.revision, one_t.tokens) == ("main", 480_000 * 2048 * 1024)  # ~1T
    assert suite.checkpoints("1.1b") == sorted(found.values(), key=lambda c: c.order)


def test_pico_tokens_per_step_is_the_recipe():
    from ckptlab.pico.build import PicoRecipe

    recipe = PicoRecipe()
    assert SUITES["pico"].step_tokens("xs") == recipe.batch_size * recipe.seq_len


# --------------------------------------------------------------------------- token counts


@pytest.mark.parametrize(
    ("text", "count"),
    [("10B", 10 * B), ("10b", 10 * B), ("2.5T", 2500 * B), ("500M", 500 * 10**6),
     ("100K", 100_000), (12345, 12345), ("7", 7)],
)  # fmt: skip
def test_token_counts(text, count):
    assert parse_token_count(text) == count


def test_format_tokens_is_exact():
    assert [format_tokens(n) for n in (3896 * B, 2 * T, 2_097_152, None)] == [
        "3896B",
        "2T",
        "2,097,152",
        "?",
    ]


# --------------------------------------------------------------------------- selectors


def _spec(steps, suite="pythia", sizes=("70m",)):
    return parse_spec(
        {
            "name": "t",
            "models": [{"suite": suite, "sizes": list(sizes), "steps": steps}],
            "analyses": [{"name": "singular_entropy"}],
        }
    )


def pythia_select(steps) -> list[int]:
    return select_steps(_spec(steps).models[0].steps, pythia_schedule(), "steps", PYTHIA_STEP)


def test_every_tokens_on_the_pythia_schedule():
    # A multiple of the tokens per step: exactly every 10000 steps.
    assert pythia_select({"every_tokens": 10_000 * PYTHIA_STEP}) == list(range(0, 140_001, 10_000))
    # 10B is 4768.37 steps: the checkpoint nearest k x 10B (every 1000 steps from 1000 on),
    # for k = 0 .. 29 (29 x 10B <= 143000 x 2,097,152 = 299.9B < 30 x 10B).
    expected = {0} | {1000 * round(k * 10 * B / PYTHIA_STEP / 1000) for k in range(1, 30)}
    assert pythia_select({"every_tokens": "10B"}) == sorted(expected)


def test_log_points_on_schedules():
    assert pythia_select({"log_points": 2}) == [0, 143000]  # first and last, always
    # Tokens 2^0 .. 2^20: 11 log-spaced points are every other power of two.
    geometric = [Checkpoint(f"s{i}", i, 2**i) for i in range(21)]
    picked = select_checkpoints(_spec({"log_points": 11}).models[0].steps, geometric, "steps")
    assert [c.tokens for c in picked] == [2 ** (2 * i) for i in range(11)]
    # With a checkpoint at 0 tokens, 0 is one of the points: 0 and 2^0, 2^10, 2^20.
    zero = [Checkpoint("s", 0, 0), *geometric]
    picked = select_checkpoints(_spec({"log_points": 4}).models[0].steps, zero, "steps")
    assert [c.tokens for c in picked] == [0, 1, 2**10, 2**20]
    # Pythia: 0, then 19 targets 143000^(i/18); the doubling steps up to 512 are each nearest
    # to one, so there are at least 11 + first + last, never more than 20.
    steps = pythia_select({"log_points": 20})
    assert steps[:11] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512] and steps[-1] == 143000
    assert len(steps) <= 20


def test_every_tokens_across_olmo2_stages_and_ingredients():
    olmo2 = SUITES["olmo2"].from_revisions(recorded("allenai--OLMo-2-1124-7B.txt"), "7b")
    steps = _spec({"every_tokens": "1T"}, "olmo2", ["7b"]).models[0].steps
    picked = [c.revision for c in select_checkpoints(steps, olmo2, "steps")]
    # nearest to 0, 1T, 2T, 3T (the last checkpoint is at 3946B): 1B, 995B, 2005B, 3029B
    assert picked == [
        "stage1-step150-tokens1B",
        "stage1-step237000-tokens995B",
        "stage1-step478000-tokens2005B",
        "stage1-step722000-tokens3029B",
    ]
    # A token count the three ingredients share picks all three.
    steps = _spec({"every_tokens": "3946B"}, "olmo2", ["7b"]).models[0].steps
    last = [c for c in select_checkpoints(steps, olmo2, "steps") if c.stage == "stage2"]
    assert sorted(c.seed for c in last) == [1, 2, 3] and {c.step for c in last} == {11931}
    # A step selector matches the step the names give, in every stage.
    steps = _spec([1000], "olmo2", ["7b"]).models[0].steps
    assert {c.seed for c in select_checkpoints(steps, olmo2, "steps")} == {1, 2, 3}


def test_log_points_without_tokens_uses_steps_and_every_tokens_refuses():
    amber = SUITES["amber"].from_revisions(recorded("LLM360--Amber.txt"), "7b")
    steps = _spec({"log_points": 3}, "amber", ["7b"]).models[0].steps
    # 0, then 2 targets over [1, 359]: 1 and 359
    assert [c.step for c in select_checkpoints(steps, amber, "steps")] == [0, 1, 359]
    with pytest.raises(SpecError, match=r"^models\[0\]\.steps: every_tokens: suite amber"):
        _spec({"every_tokens": "1T"}, "amber", ["7b"])
    with pytest.raises(SpecError, match="size '360m'"):
        _spec([{"every_tokens": "10B"}], "smollm2", ["1.7b", "360m"])


BAD_TOKEN_SELECTORS = [
    ({"every_tokens": "10G"}, "steps.every_tokens: unknown suffix 'G' (use K, M, B or T)"),
    ([0, {"every_tokens": "ten"}], "steps[1].every_tokens: expected a token count"),
    ({"every_tokens": "0B"}, "steps.every_tokens: a token count is positive"),
    ({"every_tokens": "1.5"}, "steps.every_tokens: '1.5' is not a whole number"),
    ({"log_points": 1}, "steps.log_points: Input should be greater than or equal to 2"),
    ({"log_points": 5, "every": 3}, "steps.every: unknown field"),
]


@pytest.mark.parametrize(("steps", "message"), BAD_TOKEN_SELECTORS)
def test_bad_token_selectors_are_one_line_naming_the_field(steps, message):
    with pytest.raises(SpecError) as caught:
        _spec(steps)
    assert str(caught.value).startswith(f"models[0].{message}")
    assert "\n" not in str(caught.value)


def test_an_unknown_suffix_exits_2_with_one_line(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: t\nmodels: [{suite: olmo2, sizes: [7b], steps: {every_tokens: 10X}}]\n"
        "analyses: [{name: singular_entropy}]\n"
    )
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "models[0].steps.every_tokens: unknown suffix 'X'" in lines[0]


def test_seeds_of_the_crfm_runs_are_their_names():
    with pytest.raises(SpecError, match=r"models\[0\]\.seeds\[0\]: stanford-gpt2 has seeds 21"):
        _spec("all", "stanford-gpt2", ["small"])
    spec = parse_spec(
        {
            "name": "t",
            "models": [{"suite": "stanford-gpt2", "sizes": ["medium"], "seeds": [343]}],
            "analyses": [{"name": "singular_entropy"}],
        }
    )
    source = spec.models[0]
    assert SUITES["stanford-gpt2"].repo_id("medium", source.seeds[0]) == (
        "stanford-crfm/durin-gpt2-medium-x343"
    )


# --------------------------------------------------------------------------- ckptlab suites


def test_ckptlab_suites_lists_the_catalog():
    result = CliRunner().invoke(app, ["suites"], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    for name in SUITES:
        assert name in result.output
    assert "2,097,152" in result.output and "checkpoint-{N}" in result.output
    assert "154" in result.output and "143" in result.output


def test_ckptlab_suites_name_and_json():
    runner = CliRunner()
    one = runner.invoke(app, ["suites", "olmo2"], env={"COLUMNS": "220"})
    assert one.exit_code == 0, one.output
    assert "allenai/OLMo-2-1124-7B" in one.output and "7b: 3896B" in one.output
    data = json.loads(runner.invoke(app, ["suites", "--json"]).stdout)
    by_name = {s["name"]: s for s in data["suites"]}
    assert set(by_name) == set(SUITES)
    assert by_name["smollm2"]["tokens_per_step"] == {
        "135m": 1_048_576,
        "360m": None,
        "1.7b": 2_097_152,
    }
    assert by_name["stanford-gpt2"]["repos"]["small/seed21"] == "stanford-crfm/alias-gpt2-small-x21"
    unknown = runner.invoke(app, ["suites", "gpt9"])
    assert unknown.exit_code == 2 and "unknown suite 'gpt9'" in unknown.output


# --------------------------------------------------------------------------- planning

CONFIG = b'{"model_type": "olmo2", "max_position_embeddings": 4096}'


def lay_out_cache(hub: Path, repo: str, revisions: list[str]) -> dict[str, str]:
    """A hub cache holding config.json and weights at each revision (the documented layout:
    models--org--name/refs/<revision> -> snapshots/<commit>/), as a download leaves it (the
    weights are a stand-in: planning reads their names and digests, never their tensors)."""
    storage = hub / f"models--{repo.replace('/', '--')}"
    commits = {}
    for revision in revisions:
        commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / revision).write_text(commit)
        snapshot = storage / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / "config.json").write_bytes(CONFIG)
        (snapshot / "model.safetensors").write_bytes(f"weights of {revision}".encode())
        commits[revision] = commit
    return commits


OLMO2_SPEC = {
    "name": "olmo2-tokens",
    "models": [{"suite": "olmo2", "sizes": ["7b"], "steps": [{"every_tokens": "1T"}, 11931]}],
    "analyses": [{"name": "singular_entropy"}],
}


def test_a_non_pythia_suite_plans_offline_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = tmp_path / "hub"
    commits = lay_out_cache(hub, "allenai/OLMo-2-1124-7B", recorded("allenai--OLMo-2-1124-7B.txt"))
    plan = build_plan(parse_spec(OLMO2_SPEC), hub, lambda keys: set())
    refs = [u.checkpoint for u in plan.units]
    assert [r.revision for r in refs] == [
        "stage1-step150-tokens1B",
        "stage1-step237000-tokens995B",
        "stage1-step478000-tokens2005B",
        "stage1-step722000-tokens3029B",
        "stage2-ingredient1-step11931-tokens50B",
        "stage2-ingredient2-step11931-tokens50B",
        "stage2-ingredient3-step11931-tokens50B",
    ]
    assert [u.commit for u in plan.units] == [commits[r.revision] for r in refs]
    assert [r.tokens_seen for r in refs] == [1 * B, 995 * B, 2005 * B, 3029 * B] + [3946 * B] * 3
    assert [(r.stage, r.seed) for r in refs][-3:] == [("stage2", 1), ("stage2", 2), ("stage2", 3)]
    assert {(r.suite, r.size, r.model) for r in refs} == {("olmo2", "7b", "allenai/OLMo-2-1124-7B")}
    assert plan.model_configs["allenai/OLMo-2-1124-7B"]["model_type"] == "olmo2"


def test_offline_gaps_are_unresolved_not_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = tmp_path / "hub"
    lay_out_cache(hub, "HuggingFaceTB/SmolLM2-135M-intermediate-checkpoints", ["step-240000"])
    spec = parse_spec(
        {
            "name": "gaps",
            "models": [
                {"suite": "smollm2", "sizes": ["135m"], "steps": [240000, 480000]},
                {"suite": "olmo2", "sizes": ["13b"]},  # nothing of it in the cache
            ],
            "analyses": [{"name": "singular_entropy"}],
        }
    )
    plan = build_plan(spec, hub, lambda keys: set())
    got = {(u.checkpoint.model, u.checkpoint.revision): u.error for u in plan.units}
    assert got[("HuggingFaceTB/SmolLM2-135M-intermediate-checkpoints", "step-240000")] is None
    missing = got[("HuggingFaceTB/SmolLM2-135M-intermediate-checkpoints", "step-480000")]
    assert "not in the local hub cache" in missing
    assert "not in the local hub cache" in got[("allenai/OLMo-2-1124-13B", UNLISTED)]


def test_ckptlab_plan_of_a_listed_suite_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    lay_out_cache(hub, "LLM360/Amber", recorded("LLM360--Amber.txt"))
    (tmp_path / "s.yaml").write_text(
        "name: amber\nmodels: [{suite: amber, sizes: [7b], steps: {log_points: 3}}]\n"
        "analyses: [{name: singular_entropy}]\n"
    )
    result = CliRunner().invoke(
        app, ["plan", str(tmp_path / "s.yaml"), "--db", str(tmp_path / "r.duckdb")]
    )
    assert result.exit_code == 0, result.output
    assert "3 checkpoints (3 with work), 3 cells: 0 done, 3 to compute" in result.output


@pytest.mark.slow
def test_plan_lists_a_suite_on_a_hub_of_our_own(tmp_path):
    """With hub access (a hub of our own): one refs call per repo lists the revisions, the
    same listing resolves them, and planning reads config.json only."""
    ckptlab = str(Path(sys.executable).parent / "ckptlab")
    revisions = recorded("allenai--OLMo-2-1124-7B.txt")
    with FakeHub() as hub:
        hub.add(
            "models",
            "allenai/OLMo-2-1124-7B",
            {r: {"config.json": CONFIG, "model.safetensors": r.encode()} for r in revisions},
        )
        (tmp_path / "s.yaml").write_text(json.dumps(OLMO2_SPEC))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "HF_"))}
        env |= {
            "HF_ENDPOINT": hub.url,
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "CKPTLAB_HOME": str(tmp_path / "home"),
        }
        plan = subprocess.run(
            [ckptlab, "plan", "s.yaml"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert plan.returncode == 0, plan.stdout + plan.stderr
        assert "7 checkpoints (7 with work), 7 cells: 0 done, 7 to compute" in plan.stdout
        refs = [p for m, p in hub.requests if p.endswith("/refs")]
        assert refs == ["/api/models/allenai/OLMo-2-1124-7B/refs"]
        assert hub.downloads(".safetensors") == []


def test_tokens_seen_and_stage_reach_the_results_view(tmp_path):
    import duckdb

    from ckptlab.results import ResultStore
    from ckptlab.rows import CellRow, CheckpointRow, MetricRow

    db = tmp_path / "r.duckdb"
    with duckdb.connect(str(db)) as con:  # a database from before the columns existed
        con.execute(
            "CREATE TABLE checkpoints (model VARCHAR, revision VARCHAR, step BIGINT,"
            " commit_sha VARCHAR, suite VARCHAR, size VARCHAR, seed INTEGER,"
            " first_seen TIMESTAMP, PRIMARY KEY (model, revision, commit_sha))"
        )
    store = ResultStore(db)
    store.ensure_schema()
    revision = "stage2-ingredient2-step11931-tokens50B"
    checkpoint = CheckpointRow(
        "allenai/OLMo-2-1124-7B", revision, 11931, "sha", "olmo2", "7b", 2,
        tokens_seen=3946 * B, stage="stage2",
    )  # fmt: skip
    cell = CellRow("k", "sha", "singular_entropy", 1, "{}", "h", None, "cpu", "float32", 0.0)
    store.write_unit("run", checkpoint, [cell], [MetricRow("k", None, "m", 1.0)], [])
    row = store.query("SELECT step, tokens_seen, stage, seed FROM results").rows()
    assert row == [(11931, 3946 * B, "stage2", 2)]
