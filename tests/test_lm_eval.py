"""The lm_eval analysis: lm-evaluation-harness on the checkpoint the worker loaded, inside a
normal run. Its scores equal a plain per-document loop over the same documents; it costs no
second load; the analyses next to it give the same values as without it."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_plugins import Counts, run_inline

import ckptlab.analyses.lm_eval_harness as harness
from ckptlab.analyses.lm_eval_harness import SHIPPED_TASKS, LmEvalParams, task_identity
from ckptlab.analyses.lm_eval_tasks import make_pico_tasks
from ckptlab.hub import fetch_snapshot, load_model, load_tokenizer

pytest.importorskip("lm_eval")

STEPS = [0, 64, 100]
TASKS = ["pico_python_mc", "pico_python_cloze"]
MODELS = [{"suite": "pico", "sizes": ["xs"], "steps": STEPS}]
INPUT_SET = {"name": "prose", "builtin": "pydoc_topics", "num_sequences": 4, "seq_len": 32}
GEOMETRY = [{"name": "saturation"}, {"name": "anisotropy"}]
LM_EVAL = {"name": "lm_eval", "params": {"tasks": TASKS, "log_samples": True, "batch_size": 8}}


def spec(name: str, analyses: list[dict]) -> dict:
    return {"name": name, "models": MODELS, "input_sets": [INPUT_SET], "analyses": analyses}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pico_hub):
    """The same checkpoints with and without lm_eval, the loads and passes counted, and the
    task index constructions counted (the plan's and every unit's, all in this process)."""
    built = []
    manager = harness.task_manager

    def counted(*args):
        built.append(args)
        return manager.__wrapped__(*args)

    with pytest.MonkeyPatch.context() as patch:
        counts = Counts(patch)
        harness.task_manager.cache_clear()
        patch.setattr(harness, "task_manager", harness.cache(counted))
        root = tmp_path_factory.mktemp("with")
        with_eval = run_inline(spec("with", [*GEOMETRY, LM_EVAL]), root, pico_hub)
        loads, passes, indexes = counts.loads, list(counts.passes), list(built)
    without = run_inline(spec("without", GEOMETRY), tmp_path_factory.mktemp("without"), pico_hub)
    return with_eval, without, (loads, passes, indexes), root


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The continuation's tokens as lm-eval defines them: trailing spaces of the context move
    to the continuation, and the continuation is what encoding the whole adds to the context."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return context_ids, whole[len(context_ids) :]


def loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """sum_t log p(c_t | context, c_<t) in float64, and whether c is the greedy continuation."""
    context_ids, continuation_ids = _encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()  # [pos, vocab]
    log_probs = torch.log_softmax(logits[len(context_ids) - 1 : -1], dim=-1)
    target = torch.tensor(continuation_ids)
    total = float(log_probs.gather(-1, target[:, None]).sum())
    return total, bool((log_probs.argmax(-1) == target).all())


def documents(task: str) -> list[dict]:
    return [json.loads(line) for line in (SHIPPED_TASKS / f"{task}.jsonl").read_text().splitlines()]


def stored(store, step: int) -> dict:
    rows = store.query(
        "SELECT task, metric, item, value FROM results WHERE analysis = 'lm_eval' AND step = ?",
        [step],
    )
    return {(t, m, i): v for t, m, i, v in rows.iter_rows()}


@pytest.mark.parametrize("step", STEPS)
def test_scores_equal_a_plain_loop_over_the_documents(runs, pico_hub: Path, step):
    (_, summary, store), _, _, _ = runs
    assert summary.cells_failed == 0
    rows = stored(store, step)
    folder, _ = fetch_snapshot("pico/pico-xs", f"step{step}", pico_hub, local_only=True)
    model = load_model(folder, "float32", "cpu").double()
    tokenizer = load_tokenizer(folder)

    # Multiple choice: argmax over the choices of the summed log-likelihood; acc_norm divides
    # each sum by the choice's length in bytes.
    docs = documents("pico_python_mc")
    correct, correct_norm = [], []
    for doc in docs:
        scores = [loglikelihood(model, tokenizer, doc["context"], c)[0] for c in doc["choices"]]
        lengths = [len(c.encode()) for c in doc["choices"]]
        correct.append(float(np.argmax(scores) == doc["gold"]))
        correct_norm.append(float(np.argmax(np.divide(scores, lengths)) == doc["gold"]))
    mc = "pico_python_mc"
    assert rows[(mc, "acc", None)] == pytest.approx(np.mean(correct), abs=1e-6)
    assert rows[(mc, "acc_norm", None)] == pytest.approx(np.mean(correct_norm), abs=1e-6)
    assert [rows[(mc, "doc_acc", i)] for i in range(len(docs))] == correct
    assert rows[(mc, "acc_stderr", None)] == pytest.approx(
        np.std(correct, ddof=1) / math.sqrt(len(docs)), abs=1e-9
    )
    assert rows[(mc, "n_docs", None)] == len(docs)

    # Cloze: the target is the greedy continuation; perplexity = exp(-mean log-likelihood).
    cloze = "pico_python_cloze"
    scored = [loglikelihood(model, tokenizer, d["context"], d["target"]) for d in documents(cloze)]
    assert rows[(cloze, "acc", None)] == pytest.approx(np.mean([g for _, g in scored]), abs=1e-6)
    mean_loglik = np.mean([ll for ll, _ in scored])
    assert math.log(rows[(cloze, "perplexity", None)]) == pytest.approx(-mean_loglik, abs=1e-4)


def test_one_load_and_one_task_index(runs):
    _, _, (loads, passes, indexes), _ = runs
    assert loads == len(STEPS)  # lm_eval evaluates the model the unit loaded
    assert len(passes) == len(STEPS)  # and adds no pass over the input set
    # One index for the plan and every checkpoint (inline: driver and worker in one process);
    # lm-eval's own ~10k task YAMLs are not indexed when every task is local.
    assert indexes == [(False,)]


def test_the_other_analyses_are_identical_with_and_without_lm_eval(runs):
    (_, _, with_store), (_, _, without_store), _, _ = runs
    query = (
        "SELECT analysis, step, layer, metric, value FROM results"
        " WHERE analysis IN ('saturation', 'anisotropy') ORDER BY ALL"
    )
    with_rows, without_rows = with_store.query(query).rows(), without_store.query(query).rows()
    assert len(with_rows) == len(without_rows) > 0
    assert with_rows == without_rows


def test_rows_are_keyed_by_lm_eval_and_task_versions(runs):
    (plan, _, store), _, _, _ = runs
    params = json.loads(
        store.query("SELECT params_json FROM results WHERE analysis = 'lm_eval' LIMIT 1").item()
    )
    context = params["context"]
    assert context["lm_eval_version"] == __import__("lm_eval").__version__
    assert set(context["tasks"]) == set(TASKS)
    assert all(
        t["version"] == 1.0 and len(t["config_sha256"]) == 64 for t in context["tasks"].values()
    )
    commits = {c.key: u.commit for u in plan.units for c in u.cells}
    cells = store.query(
        "SELECT DISTINCT cell_key, commit_sha FROM results WHERE analysis = 'lm_eval'"
    ).rows()
    assert len(cells) == len(STEPS) and all(commits[key] == sha for key, sha in cells)


def test_mlflow_gets_one_value_per_task_and_no_documents(runs):
    import mlflow

    *_, root = runs
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs_found = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.`ckptlab.model` = 'pico/pico-xs'",
    )
    keys = {k for r in runs_found for k in r.data.metrics}
    assert "lm_eval/pico_python_mc/acc/shots_0" in keys
    assert "lm_eval/pico_python_cloze/perplexity/shots_0" in keys
    assert not any("doc_" in k for k in keys)


def test_lm_eval_leaves_the_global_generators_and_the_tokenizer_as_they_were(pico_hub):
    folder, _ = fetch_snapshot("pico/pico-xs", "step100", pico_hub, local_only=True)
    model, tokenizer = load_model(folder, "float32", "cpu"), load_tokenizer(folder)
    pad = tokenizer.pad_token

    def seed_and_draw(between=None):
        random.seed(7)
        np.random.seed(7)
        torch.manual_seed(7)
        if between:
            between()
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    params = LmEvalParams(tasks=["pico_python_mc"], limit=4)
    assert seed_and_draw(lambda: harness.evaluate(model, tokenizer, params)) == seed_and_draw()
    assert tokenizer.pad_token == pad


def test_a_changed_task_is_new_cells(tmp_path):
    for name in ("pico_python_mc.yaml", "pico_python_mc.jsonl"):
        shutil.copy(SHIPPED_TASKS / name, tmp_path / name)
    config = yaml.safe_load((tmp_path / "pico_python_mc.yaml").read_text())
    config["task"] = "my_mc"
    yaml_file = tmp_path / "my_mc.yaml"
    yaml_file.write_text(yaml.safe_dump(config))
    (tmp_path / "pico_python_mc.yaml").unlink()

    def identity():
        harness.task_manager.cache_clear()
        params = LmEvalParams(tasks=["my_mc"], task_files=[yaml_file])
        return task_identity(params)["tasks"]["my_mc"]

    first = identity()
    data = tmp_path / "pico_python_mc.jsonl"
    data.write_text(data.read_text().replace('"gold": 2', '"gold": 1', 1))
    edited = identity()
    config["metadata"]["version"] = 2.0
    yaml_file.write_text(yaml.safe_dump(config))
    bumped = identity()
    assert first["config_sha256"] != edited["config_sha256"] != bumped["config_sha256"]
    assert (first["version"], bumped["version"]) == (1.0, 2.0)
    harness.task_manager.cache_clear()
    with pytest.raises(ValueError, match="unknown lm-eval task 'no_such_task'"):
        task_identity(LmEvalParams(tasks=["no_such_task"], task_files=[yaml_file]))
    harness.task_manager.cache_clear()


def test_without_lm_eval_installed_a_spec_asking_for_it_is_one_line(tmp_path, pico_hub):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec("needs-lm-eval", [LM_EVAL])))
    hide = (
        "import sys; sys.modules['lm_eval'] = None; from ckptlab.cli import main; "
        f"sys.argv = ['ckptlab', 'plan', {str(spec_file)!r}]; main()"
    )
    result = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'ckptlab[bench]'" in lines[0], result.stderr


def test_the_shipped_task_data_is_what_the_generator_writes():
    for filename, docs in make_pico_tasks.build().items():
        assert (SHIPPED_TASKS / filename).read_text() == make_pico_tasks.render(docs)


ARC_DOCS = [  # ARC's schema, questions written here
    {"id": "q1", "question": "Which of these is a liquid at room temperature?",
     "choices": {"text": ["water", "iron", "salt"], "label": ["A", "B", "C"]}, "answerKey": "A"},
    {"id": "q2", "question": "What do plants take in from the air?",
     "choices": {"text": ["oxygen", "carbon dioxide"], "label": ["A", "B"]}, "answerKey": "B"},
]  # fmt: skip


def test_a_local_copy_of_a_real_task_keeps_its_prompts(tmp_path, pico_hub):
    """docs/lm-eval.md's recipe: lm-eval's own arc_easy.yaml with its dataset swapped for
    local JSONL files (dataset_path: json), every prompt field unchanged."""
    from lm_eval.tasks._yaml_loader import load_yaml

    upstream = Path(__import__("lm_eval").__file__).parent / "tasks" / "arc" / "arc_easy.yaml"
    config = load_yaml(upstream, resolve_func=False)
    for key in ("tag", "dataset_name"):
        config.pop(key, None)
    (tmp_path / "arc_easy").mkdir()
    files = {}
    for split in ("train", "validation", "test"):
        (tmp_path / "arc_easy" / f"{split}.jsonl").write_text(
            "".join(json.dumps(d) + "\n" for d in ARC_DOCS)
        )
        files[split] = f"arc_easy/{split}.jsonl"
    config |= {"task": "arc_easy_local", "dataset_path": "json"}
    config["dataset_kwargs"] = {"data_files": files}
    task_file = tmp_path / "arc_easy_local.yaml"
    task_file.write_text(yaml.safe_dump(config))

    folder, _ = fetch_snapshot("pico/pico-xs", "step100", pico_hub, local_only=True)
    model, tokenizer = load_model(folder, "float32", "cpu"), load_tokenizer(folder)
    params = LmEvalParams(tasks=["arc_easy_local"], task_files=[task_file])
    results = harness.evaluate(model, tokenizer, params)
    requests = {
        (s["doc_id"], args[1])
        for s in results["samples"]["arc_easy_local"]
        for args in s["arguments"]
    }
    expected = {
        (i, f" {choice}") for i, d in enumerate(ARC_DOCS) for choice in d["choices"]["text"]
    }
    assert {(i, c) for i, c in requests} == expected
    contexts = {s["arguments"][0][0] for s in results["samples"]["arc_easy_local"]}
    assert contexts == {f"Question: {d['question']}\nAnswer:" for d in ARC_DOCS}
    rows = harness.rows_of(results, params)
    assert {r.metric for r in rows} >= {"acc", "acc_norm", "n_docs"}


def test_submit_carries_a_task_file_and_the_data_it_names(tmp_path, monkeypatch):
    from ckptlab.orchestrator.jobs import stage_spec
    from ckptlab.spec import load_spec

    project = tmp_path / "project"
    (project / "tasks" / "data").mkdir(parents=True)
    config = yaml.safe_load((SHIPPED_TASKS / "pico_python_mc.yaml").read_text())
    config["task"] = "my_mc"
    config["dataset_kwargs"]["data_files"] = {"test": "data/my_mc.jsonl"}
    (project / "tasks" / "my_mc.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(SHIPPED_TASKS / "pico_python_mc.jsonl", project / "tasks" / "data" / "my_mc.jsonl")
    params = {"tasks": ["my_mc"], "task_files": ["tasks/my_mc.yaml"]}
    (project / "spec.yaml").write_text(
        yaml.safe_dump(spec("carried", [{"name": "lm_eval", "params": params}]))
    )
    monkeypatch.chdir(tmp_path)  # the spec's paths lie in its folder, not here
    work = tmp_path / "work"
    work.mkdir()
    staged = stage_spec(project / "spec.yaml", load_spec(project / "spec.yaml"), work)
    assert sorted(staged.carried) == ["tasks/data/my_mc.jsonl", "tasks/my_mc.yaml"]
    assert (work / "tasks" / "data" / "my_mc.jsonl").read_bytes() == (
        project / "tasks" / "data" / "my_mc.jsonl"
    ).read_bytes()
    # From the job's working dir, the staged task resolves to the carried data.
    monkeypatch.chdir(work)
    harness.task_manager.cache_clear()
    carried = LmEvalParams(tasks=["my_mc"], task_files=[Path("tasks/my_mc.yaml")])
    [loaded] = harness.task_configs(carried, resolve_functions=False)
    assert loaded["dataset_kwargs"]["data_files"]["test"] == str(
        (work / "tasks" / "data" / "my_mc.jsonl").resolve()
    )


def test_a_task_hashes_the_same_wherever_its_folder_is(tmp_path):
    """A laptop's folder and a job's working dir: same task, same data, same cells, also for
    a task whose YAML names a function in a file next to it."""
    for where in ("laptop", "cluster"):
        folder = tmp_path / where / "tasks"
        folder.mkdir(parents=True)
        shutil.copy(SHIPPED_TASKS / "pico_python_mc.jsonl", folder / "docs.jsonl")
        (folder / "utils.py").write_text("def process_docs(dataset):\n    return dataset\n")
        text = (SHIPPED_TASKS / "pico_python_mc.yaml").read_text()
        text = text.replace("task: pico_python_mc", "task: moved_mc")
        text = text.replace("test: pico_python_mc.jsonl", "test: docs.jsonl")
        (folder / "moved_mc.yaml").write_text(text + "process_docs: !function utils.process_docs\n")

    def identity(where: str) -> dict:
        harness.task_manager.cache_clear()
        task_file = tmp_path / where / "tasks" / "moved_mc.yaml"
        return task_identity(LmEvalParams(tasks=["moved_mc"], task_files=[task_file]))

    assert identity("laptop") == identity("cluster")
    harness.task_manager.cache_clear()


def test_batch_size_device_and_dtype_are_set_on_hflm(pico_hub, monkeypatch):
    """simple_evaluate ignores them for a model instance: the analysis gives them to HFLM."""
    from lm_eval.models import huggingface

    seen = {}
    original = huggingface.HFLM.__init__

    def recording(self, *args, **kwargs):
        seen.update(kwargs)
        original(self, *args, **kwargs)
        seen["batch_size_used"] = self.batch_size

    monkeypatch.setattr(huggingface.HFLM, "__init__", recording)
    folder, _ = fetch_snapshot("pico/pico-xs", "step100", pico_hub, local_only=True)
    model, tokenizer = load_model(folder, "float32", "cpu"), load_tokenizer(folder)
    harness.evaluate(
        model, tokenizer, LmEvalParams(tasks=["pico_python_mc"], limit=2, batch_size=3)
    )
    assert (seen["batch_size"], seen["batch_size_used"]) == (3, 3)
    assert (seen["device"], seen["dtype"]) == ("cpu", torch.float32)
    assert seen["tokenizer"] is not tokenizer  # a copy
