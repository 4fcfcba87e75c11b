"""Public suites as they are served, through the real huggingface_hub client against a hub of
our own on 127.0.0.1 (tests/fake_hub.py): sharded safetensors, single and sharded pickles, a
revision without weights, revisions that repeat another's weights whole (pythia #205, #83) or
share a shard with one (#206), a model that needs remote code.

``ckptlab plan`` reads all of it from the hub's tree listings, downloading no weight file, and
caches the listings by commit (a second plan asks the hub for refs only). ``ckptlab run``
loads every layout, equal to a float64 recomputation from transformers' own logits, skips
whole duplicates (their rows copied, flagged ``duplicate_of``), and records the failures in
one line each.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import pytest
import torch
import torch.nn.functional as F
import yaml

from ckptlab.orchestrator.plan import build_plan
from ckptlab.spec import parse_spec
from ckptlab.weights import RepoFile, WeightsError, choose_layout

from fake_hub import FakeHub
from hub_layouts import (
    mixed_shards,
    needs_remote_code,
    same_weights,
    sharded_pickles,
    sharded_safetensors,
    single_pickle,
    without_weights,
)
from test_hub_download import ckptlab, client_env, published

SPEC = {
    "name": "layouts",
    "models": [
        {"repo": "lay/safe-sharded", "revisions": ["step0", "step100"]},
        {"repo": "lay/pickle-sharded", "revisions": ["step0", "step64", "step100"]},
        {"repo": "lay/pickle", "revisions": ["step0"]},
        {"repo": "lay/dupes", "revisions": ["step0", "step1", "step64", "step100"]},
        {"repo": "lay/no-weights", "revisions": ["step0", "step100"]},
        {"repo": "lay/custom", "revisions": ["step0", "step100"]},
    ],
    "input_sets": [{"name": "prose", "builtin": "pydoc_topics", "num_sequences": 2, "seq_len": 16}],
    "analyses": [{"name": "saturation"}, {"name": "singular_entropy"}],
}


@pytest.fixture(scope="module")
def folders(pico_hub, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """repo -> {branch: folder}, each made from pico-xs's steps 0 and 100."""
    xs = published(pico_hub, "xs")
    root = tmp_path_factory.mktemp("layouts")
    safe = {s: sharded_safetensors(xs[s], root / "safe" / s) for s in ("step0", "step100")}
    pickles = {s: sharded_pickles(xs[s], root / "pickles" / s) for s in ("step0", "step100")}
    pickles["step64"] = mixed_shards(pickles["step100"], pickles["step0"], root / "mixed")
    # step1 serves step0's weights (#83), step64 the final checkpoint's (#205).
    dupes = {
        "step0": xs["step0"],
        "step1": same_weights(xs["step0"], root / "dupes" / "step1", "step1"),
        "step64": same_weights(xs["step100"], root / "dupes" / "step64", "step64"),
        "step100": xs["step100"],
    }
    custom = {s: needs_remote_code(xs[s], root / "custom" / s) for s in ("step0", "step100")}
    return {
        "lay/safe-sharded": safe,
        "lay/pickle-sharded": pickles,
        "lay/pickle": {"step0": single_pickle(xs["step0"], root / "pickle")},
        "lay/dupes": dupes,
        "lay/no-weights": {
            "step0": without_weights(xs["step0"], root / "empty"),
            # A commit of its own: the hub's commits are unique across repos.
            "step100": same_weights(xs["step100"], root / "no-weights-100", "no-weights"),
        },
        "lay/custom": custom,
    }


@pytest.fixture(scope="module")
def hub(folders):
    with FakeHub() as server:
        for repo, branches in folders.items():
            server.add_model(repo, branches)
        yield server


@pytest.fixture(scope="module")
def planned(hub, tmp_path_factory) -> tuple[Path, Path, dict, list]:
    """(workdir, home, `plan --json` of a cold home, the hub requests it made)."""
    work = tmp_path_factory.mktemp("plan")
    (work / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    home = work / "home"
    hub.requests.clear()
    result = ckptlab(["plan", "spec.yaml", "--json"], client_env(hub, home), work)
    assert result.returncode == 0, result.stdout + result.stderr
    return work, home, json.loads(result.stdout), list(hub.requests)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weight_files(folder: Path) -> list[dict]:
    return [
        {"file": p.name, "size": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(folder.iterdir())
        if p.suffix in (".safetensors", ".bin")
    ]


def test_plan_reads_every_layout_from_hub_metadata_without_downloading(planned, folders, hub):
    _, _, plan, requests = planned
    units = {(u["model"], u["revision"]): u for u in plan["units"]}
    formats = {key: u["weight_format"] for key, u in units.items()}
    assert formats[("lay/safe-sharded", "step0")] == "safetensors-sharded"
    assert formats[("lay/pickle-sharded", "step64")] == "pickle-sharded"
    assert formats[("lay/pickle", "step0")] == "pickle"
    assert formats[("lay/dupes", "step1")] == "safetensors"
    # Every weight file with its size and the sha256 of its bytes, as the hub lists them.
    for (repo, revision), unit in units.items():
        if unit["weight_format"] is not None:
            assert unit["weights"] == weight_files(folders[repo][revision]), (repo, revision)
    assert len(units[("lay/pickle-sharded", "step0")]["weights"]) == 3
    # Nothing but refs, tree listings and the tokenizer's small files was fetched.
    downloads = [p for m, p in requests if m == "GET" and "/resolve/" in p]
    assert downloads and not [p for p in downloads if p.endswith((".safetensors", ".bin"))]
    trees = [p for m, p in requests if "/tree/" in p]
    resolved = [u for u in plan["units"] if u["commit"]]
    # One listing per commit, and one per model for the tokenizer's snapshot.
    models = {u["model"] for u in resolved}
    assert len(trees) == len({(u["model"], u["commit"]) for u in resolved}) + len(models)


def test_duplicates_whole_and_shared_shards_before_any_download(planned, folders):
    _, _, plan, _ = planned
    got = {(d["model"], d["revision"]): d for d in plan["duplicates"]}
    shard = "pytorch_model-{:05d}-of-00003.bin".format
    assert got == {
        ("lay/dupes", "step1"): {"model": "lay/dupes", "revision": "step1", "same_as": "step0",
                                 "files": ["model.safetensors"], "whole": True},
        ("lay/dupes", "step100"): {"model": "lay/dupes", "revision": "step100",
                                   "same_as": "step64", "files": ["model.safetensors"],
                                   "whole": True},
        # step64: shards 2-3 are step0's; step100 shares its first shard with step64.
        ("lay/pickle-sharded", "step64"): {"model": "lay/pickle-sharded", "revision": "step64",
                                           "same_as": "step0", "files": [shard(2), shard(3)],
                                           "whole": False},
        ("lay/pickle-sharded", "step100"): {"model": "lay/pickle-sharded",
                                            "revision": "step100", "same_as": "step64",
                                            "files": [shard(1)], "whole": False},
    }  # fmt: skip
    units = {(u["model"], u["revision"]): u for u in plan["units"]}
    assert units[("lay/dupes", "step1")]["duplicate_of"] == "step0"  # skipped: copied rows
    assert units[("lay/pickle-sharded", "step64")]["duplicate_of"] is None  # computed


def test_unresolved_no_weights_and_remote_code_are_one_line(planned):
    _, _, plan, requests = planned
    errors = {(u["model"], u["revision"]): u["error"] for u in plan["unresolved"]}
    assert set(errors) == {("lay/no-weights", "step0"), ("lay/custom", "step0"),
                           ("lay/custom", "step100")}  # fmt: skip
    assert errors[("lay/no-weights", "step0")].startswith(
        "no weight files: neither model.safetensors, model-*-of-*.safetensors"
    )
    custom = errors[("lay/custom", "step0")]
    assert custom == errors[("lay/custom", "step100")]
    assert (
        "model_type 'ckptlab_custom_lm'" in custom and "loading.trust_remote_code: true" in custom
    )
    assert all("\n" not in e and len(e) < 300 for e in errors.values())
    assert not [p for _, p in requests if "lay/custom" in p and p.endswith((".py", ".bin"))]


def test_bytes_to_download_counts_each_file_once_and_no_skipped_duplicate(planned, folders):
    _, _, plan, _ = planned
    expected: dict[str, int] = {}
    runs = {("lay/safe-sharded", "step0"), ("lay/safe-sharded", "step100"),
            ("lay/pickle-sharded", "step0"), ("lay/pickle-sharded", "step64"),
            ("lay/pickle-sharded", "step100"), ("lay/pickle", "step0"), ("lay/dupes", "step0"),
            ("lay/dupes", "step64"), ("lay/no-weights", "step100")}  # fmt: skip
    for repo, branches in folders.items():
        seen = set()
        expected[repo] = 0
        for revision, folder in branches.items():
            for f in weight_files(folder) if (repo, revision) in runs else []:
                if f["sha256"] not in seen:
                    seen.add(f["sha256"])
                    expected[repo] += f["size"]
    assert plan["bytes_to_download"]["models"] == expected
    assert plan["bytes_to_download"]["total"] == sum(expected.values())


def test_a_warm_plan_asks_the_hub_for_refs_only(planned, hub):
    work, home, _, _ = planned
    hub.requests.clear()
    result = ckptlab(["plan", "spec.yaml"], client_env(hub, home), work)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [p for _, p in hub.requests if "/tree/" in p]  # listings from the cache
    out = " ".join(result.stdout.split())
    assert "lay/pickle-sharded: pickle-sharded weights (3 files per revision)" in out
    assert "lay/dupes: 2 of 4 revisions repeat an earlier revision's weights" in out
    assert "copied, not computed (loading.duplicates: skip)" in out
    assert "lay/pickle-sharded@step100 shares pytorch_model-00001-of-00003.bin with step64" in out
    assert "unresolved lay/custom: step0, step100: model_type 'ckptlab_custom_lm' is not in" in out


@pytest.mark.parametrize(
    ("loading", "expected"),
    [
        ({"duplicates": "compute"}, {}),
        ({"duplicates": "fail"},
         {("lay/dupes", "step1"): "same weights as step0 (loading.duplicates: fail)",
          ("lay/dupes", "step100"): "same weights as step64 (loading.duplicates: fail)"}),
        ({"allow_pickle_weights": False},
         {("lay/pickle", "step0"): "only pickled weights (pytorch_model.bin), refused by "
          "loading.allow_pickle_weights: false (set it true to load them with torch's "
          "weights_only unpickler)"}),
    ],
)  # fmt: skip
def test_spec_choices_offline_from_the_kept_metadata(planned, monkeypatch, loading, expected):
    """Offline (HF_HUB_OFFLINE=1, as under pytest), the plan reads the refs and listings the
    online plan kept: the same duplicates, whatever the policy says to do with them."""
    _, home, _, _ = planned
    monkeypatch.setenv("CKPTLAB_HOME", str(home))
    spec = parse_spec(SPEC | {"loading": loading, "analyses": [{"name": "singular_entropy"}]})
    plan = build_plan(spec, home / "hub", lambda keys: set())
    # Refused pickles have no layout: only the safetensors duplicates are left.
    assert len(plan.duplicates) == (2 if loading.get("allow_pickle_weights") is False else 4)
    errors = {
        (u.checkpoint.model, u.checkpoint.revision): u.error
        for u in plan.units
        if u.error and u.checkpoint.model not in ("lay/no-weights", "lay/custom")
    }
    if loading.get("allow_pickle_weights") is False:  # each pickled revision, one line
        refused = {key: errors.pop(key) for key in list(errors) if key[0] == "lay/pickle-sharded"}
        assert len(refused) == 3 and all(
            e.startswith("only pickled weights (") for e in refused.values()
        )
    # Nothing was downloaded: offline, each checkpoint to load is unresolved for that (one
    # line); a skipped duplicate needs no weights, so it is not.
    not_cached = {key for key, error in errors.items() if "not in the local hub cache" in error}
    assert not_cached == errors.keys() - expected.keys()
    assert {key: errors[key] for key in errors.keys() - not_cached} == expected
    skipped = {(u.checkpoint.model, u.checkpoint.revision) for u in plan.units if u.duplicate_of}
    skips = loading.get("duplicates", "skip") == "skip"
    assert skipped == ({("lay/dupes", "step1"), ("lay/dupes", "step100")} if skips else set())


@pytest.mark.slow
def test_run_loads_every_layout_copies_duplicates_and_records_failures(planned, hub, folders):
    work, home, plan, _ = planned
    hub.requests.clear()
    run = ckptlab(["run", "spec.yaml", "--executor", "inline"], client_env(hub, home), work)
    assert run.returncode == 1, run.stdout + run.stderr  # the unresolved ones fail their cells
    assert "Traceback" not in run.stdout + run.stderr
    # The skipped duplicates and the remote-code model were never downloaded.
    commits = {(u["model"], u["revision"]): u["commit"] for u in plan["units"]}
    never = [f"/lay/dupes/resolve/{commits[('lay/dupes', step)]}/" for step in ("step1", "step100")]
    never.append("/lay/custom/")
    asked = [p for m, p in hub.requests if m == "GET" and "/resolve/" in p]
    assert asked and not [p for p in asked if any(n in p for n in never)]
    con = duckdb.connect(str(home / "results.duckdb"), read_only=True)
    formats = dict(con.sql("SELECT model || '@' || revision, weight_format FROM checkpoints")
                   .fetchall())  # fmt: skip
    assert formats["lay/safe-sharded@step0"] == "safetensors-sharded"
    assert formats["lay/pickle-sharded@step64"] == "pickle-sharded"
    assert formats["lay/pickle@step0"] == "pickle"
    rows = con.sql(
        "SELECT r.model, r.revision, r.value, r.duplicate_of, c.copied_from, r.cell_key"
        " FROM results r JOIN cells c USING (cell_key) WHERE r.metric = 'cross_entropy'"
    ).fetchall()
    values = {(m, r): (v, twin, copied, key) for m, r, v, twin, copied, key in rows}
    # Every layout of a step gives that step's value: the same tensors, bit for bit.
    step0 = values[("lay/safe-sharded", "step0")][0]
    for key in [("lay/pickle-sharded", "step0"), ("lay/pickle", "step0"), ("lay/dupes", "step0"),
                ("lay/dupes", "step1")]:  # fmt: skip
        assert values[key][0] == step0, key
    # The duplicates: copied from the cell of the revision they repeat, and flagged.
    assert values[("lay/dupes", "step1")][1:3] == ("step0", values[("lay/dupes", "step0")][3])
    assert values[("lay/dupes", "step100")][1:3] == ("step64", values[("lay/dupes", "step64")][3])
    assert values[("lay/safe-sharded", "step100")][0] == values[("lay/dupes", "step100")][0]
    # ... and the value is the float64 cross-entropy of transformers' own logits.
    ids = torch.tensor([r[0] for r in con.sql("SELECT token_ids FROM inputs ORDER BY seq_index")
                        .fetchall()])  # fmt: skip
    assert values[("lay/pickle-sharded", "step0")][0] == pytest.approx(
        float64_cross_entropy(folders["lay/safe-sharded"]["step0"], ids), abs=1e-6
    )
    failures = dict(con.sql("SELECT DISTINCT model || '@' || revision, error FROM failures")
                    .fetchall())  # fmt: skip
    assert set(failures) == {"lay/no-weights@step0", "lay/custom@step0", "lay/custom@step100"}
    assert "no weight files" in failures["lay/no-weights@step0"]
    cells = con.execute("SELECT count(*), count(copied_from) FROM cells").fetchone()
    con.close()
    assert cells[1] == 4  # step1 and step100 of lay/dupes, two analyses each
    # A rerun computes and copies nothing more (only the unresolved fail again).
    again = ckptlab(["run", "spec.yaml", "--executor", "inline"], client_env(hub, home), work)
    assert again.returncode == 1, again.stdout + again.stderr
    con = duckdb.connect(str(home / "results.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), count(copied_from) FROM cells").fetchone() == cells
    con.close()


def float64_cross_entropy(folder: Path, ids: torch.Tensor) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    with torch.no_grad():
        logits = model(ids).logits
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                 ids[:, 1:].reshape(-1)))  # fmt: skip


def test_hub_layouts_writers_keep_the_tensors(folders):
    """The fixtures themselves: each layout holds the source's tensors, bit for bit."""
    from safetensors.torch import load_file

    source = load_file(folders["lay/dupes"]["step0"] / "model.safetensors")
    shards = sorted((folders["lay/safe-sharded"]["step0"]).glob("model-*.safetensors"))
    merged = {k: v for s in shards for k, v in load_file(s).items()}
    pickled = torch.load(folders["lay/pickle"]["step0"] / "pytorch_model.bin", weights_only=True)
    for copy in (merged, pickled):
        assert copy.keys() == source.keys()
        assert all(torch.equal(copy[k], source[k]) for k in source)


def _listing(*names: str) -> dict[str, RepoFile]:
    return {n: RepoFile(n, 10, hashlib.sha256(n.encode()).hexdigest()) for n in names}


SAFE = [f"model-{k:05d}-of-00003.safetensors" for k in (1, 2, 3)]
BIN = [f"pytorch_model-{k:05d}-of-00002.bin" for k in (1, 2)]


@pytest.mark.parametrize(
    ("names", "allow_pickle", "expected"),
    [
        # transformers' order: the single file first, then the shards, pickles last
        (["model.safetensors", "model-00001-of-00002.safetensors"], True, ("safetensors", 1)),
        ([*SAFE, "model.safetensors.index.json", "pytorch_model.bin"], True,
         ("safetensors-sharded", 3)),
        # a stale 2-shard set beside the current 3: the complete set, never a mix
        ([*SAFE, "model-00001-of-00002.safetensors", "model.safetensors.index.json"], True,
         ("safetensors-sharded", 3)),
        # incomplete safetensors give way to complete pickles
        ([SAFE[0], "model.safetensors.index.json", *BIN, "pytorch_model.bin.index.json"], True,
         ("pickle-sharded", 2)),
        (["pytorch_model.bin", "training_args.bin"], True, ("pickle", 1)),
        ([SAFE[0], SAFE[2], "model.safetensors.index.json"], True,
         "weight shards missing: model-00002-of-00003.safetensors"),
        ([*BIN], True, "2 weight shards but no pytorch_model.bin.index.json"),
        (["pytorch_model.bin"], False,
         "only pickled weights (pytorch_model.bin), refused by loading.allow_pickle_weights"),
        (["config.json", "consolidated.pth"], True,
         "no weight files: neither model.safetensors, model-*-of-*.safetensors, "
         "pytorch_model.bin nor pytorch_model-*-of-*.bin (it has consolidated.pth, which "
         "transformers does not load)"),
    ],
)  # fmt: skip
def test_choose_layout(names, allow_pickle, expected):
    if isinstance(expected, str):
        with pytest.raises(WeightsError) as err:
            choose_layout(_listing(*names), allow_pickle)
        assert str(err.value).startswith(expected)
    else:
        layout = choose_layout(_listing(*names), allow_pickle)
        assert (layout.format, len(layout.files)) == expected
        assert all(n.endswith((".safetensors", ".bin")) for n in layout.names[: len(layout.files)])


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_a_reference_checkpoint_runs_whatever_the_duplicate_policy(planned, monkeypatch, policy):
    """cka reads the last step's sketch: lay/dupes' step100 repeats step64's weights but is
    the reference, so it is neither skipped nor failed (step1 is, as the policy says)."""
    _, home, _, _ = planned
    monkeypatch.setenv("CKPTLAB_HOME", str(home))
    spec = SPEC | {
        "models": [{"repo": "lay/dupes", "revisions": ["step0", "step1", "step64", "step100"]}],
        "analyses": [{"name": "cka"}],
        "loading": {"duplicates": policy},
    }
    plan = build_plan(parse_spec(spec), home / "hub", lambda keys: set())
    units = {u.checkpoint.revision: u for u in plan.units}
    assert {r.checkpoint.revision for r in plan.sketches.values()} == {"step100"}
    assert units["step100"].duplicate_of is None
    assert "loading.duplicates" not in (units["step100"].error or "")
    if policy == "skip":
        assert units["step1"].duplicate_of.revision == "step0"
    else:
        assert units["step1"].error == "same weights as step0 (loading.duplicates: fail)"
