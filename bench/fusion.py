"""Fusion: one sweep run by ckptlab against the papers' loop (issue 12, part 1).

    python bench/fusion.py               # pico xs + s, all 36 checkpoints, 9 analyses, A B A B
    python bench/fusion.py --rounds 1    # A, B only (default 2: A, B, A, B; medians)
    python bench/fusion.py --smoke       # pico xs steps 0-2, 2 analyses, a few tokens

(a) ``ckptlab run`` (the CLI in a fresh process, private local Ray, fresh results DB and MLflow
store each time, checkpoints from the hub cache) on a generated spec. (b) A plain loop written
the papers' way: for each analysis, for each checkpoint, ``from_pretrained`` (model and
tokenizer, repo + revision, local files only), one forward pass over the whole input set with
``output_hidden_states=True`` plus the hooks that analysis reads, then that analysis computed by
ckptlab's own code on the capture (``AnalysisDef.run``). Both read the same token ids
(``ckptlab.inputs.materialize`` with the model's tokenizer) and compute the same numbers; only
the orchestration differs, which the max |a - b| over the joined metrics checks.

Loads and forward passes are counted by the same instrument on both sides: a
``sitecustomize`` on PYTHONPATH (so it reaches Ray's worker processes too) wraps
``PreTrainedModel.from_pretrained`` and ``GPTNeoXModel.forward`` and logs each call with the
model it ran on; a forward pass over an input set = its sequences forwarded ÷ its size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from common import` from anywhere
from common import provenance, table
from overhead import ckptlab_run, hub_dir, spec_yaml, startup

ROOT = Path(__file__).resolve().parents[1]
SEEDS_SPEC = ROOT / "specs" / "seeds.yaml"

FULL = {
    "sizes": ["xs", "s"],
    "steps": "all",
    "analyses": None,  # every per-checkpoint analysis of specs/seeds.yaml
    "num_sequences": 32,
    "seq_len": 128,
}
SMOKE = {
    "sizes": ["xs"],
    "steps": [0, 1, 2],
    "analyses": ["saturation", "anisotropy"],
    "num_sequences": 4,
    "seq_len": 32,
}
BATCH_SIZE = 16  # ckptlab's batches (seeds.yaml's); the loop forwards the whole set at once

COUNTER_SITE = '''\
"""Written by bench/fusion.py for one benchmark run: logs every model load and every
GPT-NeoX forward call of this process to $CKPTLAB_BENCH_COUNTS/<pid>.log."""
import importlib.abc
import os
import sys

_DIR = os.environ.get("CKPTLAB_BENCH_COUNTS")
_TARGETS = {"transformers.modeling_utils", "transformers.models.gpt_neox.modeling_gpt_neox"}


def _log(*fields):
    with open(os.path.join(_DIR, f"{os.getpid()}.log"), "a") as out:
        out.write("\\t".join(map(str, fields)) + "\\n")


def _patch(module):
    if module.__name__ == "transformers.modeling_utils":
        cls = module.PreTrainedModel
        loader = cls.from_pretrained.__func__

        def from_pretrained(klass, path, *args, **kwargs):
            model = loader(klass, path, *args, **kwargs)
            _log("load", path, kwargs.get("revision") or "")
            return model

        cls.from_pretrained = classmethod(from_pretrained)
    else:
        cls = module.GPTNeoXModel
        forward = cls.forward

        def counted(self, input_ids=None, *args, **kwargs):
            _log("forward", 0 if input_ids is None else int(input_ids.shape[0]))
            return forward(self, input_ids, *args, **kwargs)

        cls.forward = counted


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if _DIR:
    sys.meta_path.insert(0, _Finder())
'''


def per_checkpoint_analyses() -> list[tuple[str, dict]]:
    """seeds.yaml's analyses that need nothing but one checkpoint: not cka (it compares with
    another checkpoint), not icl (its own prompts, many forward passes: not this input set)."""
    import yaml

    from ckptlab.analyses.registry import Need, get_analysis

    entries = yaml.safe_load(SEEDS_SPEC.read_text())["analyses"]
    chosen = []
    for entry in entries:
        needs = get_analysis(entry["name"]).needs
        if Need.REFERENCE in needs or Need.MODEL in needs:
            continue
        chosen.append((entry["name"], entry.get("params") or {}))
    return chosen


def checkpoints(sizes: list[str], steps) -> list[tuple[str, str, int]]:
    """(repo, revision, step) of the sweep, in the catalog's order."""
    from ckptlab.catalog import SUITES

    suite = SUITES["pico"]
    wanted = list(suite.schedule) if steps == "all" else steps
    return [(suite.repo_id(size), f"step{step}", step) for size in sizes for step in wanted]


# --------------------------------------------------------------------------- counting


def read_counts(folder: Path) -> dict[tuple[str, str], dict]:
    """Loads and sequences forwarded per checkpoint; a forward call belongs to the last load
    in its process. A ckptlab worker loads a snapshot folder (.../models--ORG--NAME/snapshots/
    COMMIT), the loop a repo and a revision: checkpoints are (repo, commit or revision)."""
    counts: dict[tuple[str, str], dict] = {}
    for log in folder.glob("*.log"):
        current = None
        for line in log.read_text().splitlines():
            kind, *fields = line.split("\t")
            if kind == "load":
                path, revision = fields
                parts = Path(path).parts
                if "snapshots" in parts:
                    repo = parts[parts.index("snapshots") - 1].removeprefix("models--")
                    current = (repo.replace("--", "/"), parts[parts.index("snapshots") + 1])
                else:
                    current = (path, revision)
                counts.setdefault(current, {"loads": 0, "rows": 0})["loads"] += 1
            elif kind == "forward" and current is not None:
                counts[current]["rows"] += int(fields[0])
    return counts


def per_checkpoint(counts: dict, n_checkpoints: int, num_sequences: int) -> tuple[str, str]:
    """(loads per checkpoint, passes per input set per checkpoint) as 'mean (min-max)'."""
    loads = [c["loads"] for c in counts.values()]
    passes = [c["rows"] / num_sequences for c in counts.values()]
    if len(counts) != n_checkpoints:
        return f"{len(counts)} checkpoints seen of {n_checkpoints}", ""

    def spread(values: list[float]) -> str:
        low, high = min(values), max(values)
        return f"{low:g}" if low == high else f"{statistics.mean(values):.2f} ({low:g}–{high:g})"

    return spread(loads), spread(passes)


# --------------------------------------------------------------------------- the naive loop


def naive(config: dict) -> dict:
    """The papers' way, in this process; returns its values, counts and seconds."""
    began = time.perf_counter()
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from ckptlab.analyses.capture import Capture
    from ckptlab.analyses.registry import FORWARD_NEEDS, Need, get_analysis
    from ckptlab.inputs import materialize
    from ckptlab.orchestrator.forward import final_norm_module, mlp_out_projections
    from ckptlab.spec import InputSet

    hf_logging.disable_progress_bar()
    hub = config["hub"]
    # From the hub cache; with "online" (bench/download_sweep.py) from HF_ENDPOINT's server.
    where = {"cache_dir": hub, "local_files_only": not config.get("online")}

    def capture_of(model, tokenizer, ids: torch.Tensor, needs) -> tuple[Capture, bool]:
        """One forward pass over the whole input set with what this analysis reads."""
        capture = Capture(input_ids=ids, tokenizer_vocab_size=len(tokenizer))
        if needs & {Need.LM_HEAD, Need.READOUT}:
            capture.lm_head_weight = model.get_output_embeddings().weight.detach()
        if Need.READOUT in needs:
            capture.final_norm = final_norm_module(model)
        if Need.EMBEDDINGS in needs:
            capture.input_embedding_weight = model.get_input_embeddings().weight.detach()
        if not needs & FORWARD_NEEDS:  # weights only (singular entropy): no forward pass
            return capture, False
        kept: dict = {}
        hooks = []
        if Need.PRE_FINAL_NORM in needs:
            hooks.append(
                final_norm_module(model).register_forward_pre_hook(
                    lambda _m, args: kept.__setitem__("pre", args[0])
                )
            )
        if Need.MLP_ACTIVATIONS in needs:
            for block, module in enumerate(mlp_out_projections(model)):
                hooks.append(
                    module.register_forward_pre_hook(
                        lambda _m, args, block=block: kept.__setitem__(block, args[0])
                    )
                )
        try:
            with torch.inference_mode():
                out = model(input_ids=ids, output_hidden_states=True)
        finally:
            for hook in hooks:
                hook.remove()
        capture.hidden_states = out.hidden_states
        capture.pre_final_norm = kept.get("pre")
        blocks = sorted(k for k in kept if isinstance(k, int))
        if blocks:
            capture.mlp_activations = tuple(kept[b] for b in blocks)
        if Need.TOKEN_NLL in needs:
            logits = out.logits.float()
            nll = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                ids[:, 1:].reshape(-1),
                reduction="none",
            )
            capture.token_nll = nll.view(ids.shape[0], -1)
        return capture, True

    sweep = [tuple(c) for c in config["checkpoints"]]
    tokens: dict[str, torch.Tensor] = {}
    input_set_ids: dict[str, str] = {}
    for repo, revision, _ in sweep:  # each model's input set, cut with its first tokenizer
        if repo not in tokens:
            tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision, **where)
            cut = materialize(InputSet(**config["input_set"]), tokenizer, tokenizer_of=repo)
            tokens[repo] = torch.from_numpy(cut.token_ids)
            input_set_ids[repo] = cut.input_set_id
    seconds = {"setup": time.perf_counter() - began, "load": 0.0, "forward": 0.0, "compute": 0.0}
    loads = forwards = 0
    rows = []
    for name, params in config["analyses"]:
        definition = get_analysis(name)
        validated = definition.params_model.model_validate(params)
        for repo, revision, step in sweep:
            clock = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(
                repo, revision=revision, dtype=torch.float32, **where
            ).eval()
            tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision, **where)
            loads += 1
            loaded = time.perf_counter()
            capture, ran = capture_of(model, tokenizer, tokens[repo], definition.needs)
            forwards += ran
            passed = time.perf_counter()
            values = definition.run(capture, validated)
            done = time.perf_counter()
            seconds["load"] += loaded - clock
            seconds["forward"] += passed - loaded
            seconds["compute"] += done - passed
            rows += [[repo, step, name, v.metric, v.layer, v.item, v.value] for v in values]
            del model, tokenizer, capture
    return {
        "rows": rows,
        "loads": loads,
        "forwards": forwards,
        "seconds": seconds,
        "input_set_ids": input_set_ids,
    }


def naive_run(config: dict, workdir: Path, env: dict[str, str]) -> dict:
    """The loop in a fresh process (its imports count, as ckptlab's do)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(config))
    command = [sys.executable, str(Path(__file__).resolve()), "--naive", str(workdir)]
    clock = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - clock
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"naive loop failed ({done.returncode}):\n{tail}")
    result = json.loads((workdir / "result.json").read_text())
    return result | {"wall": wall}


# --------------------------------------------------------------------------- comparing


def ckptlab_values(db: Path) -> dict[tuple, float]:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        found = con.execute(
            "SELECT model, step, analysis, metric, layer, item, value FROM results"
        ).fetchall()
    return {tuple(r[:6]): r[6] for r in found}


def compare(a: dict[tuple, float], b_rows: list[list]) -> dict:
    import math

    b = {tuple(r[:6]): r[6] for r in b_rows}
    shared = a.keys() & b.keys()
    diffs, nan_mismatch = [], 0
    for key in shared:
        x, y = a[key], b[key]
        if x is None or y is None or math.isnan(x) or math.isnan(y):
            nan_mismatch += not ((x is None or math.isnan(x)) and (y is None or math.isnan(y)))
            continue
        diffs.append(abs(x - y))
    return {
        "joined": len(shared),
        "only_a": len(a.keys() - b.keys()),
        "only_b": len(b.keys() - a.keys()),
        "max_abs": max(diffs, default=float("nan")),
        "nan_mismatch": nan_mismatch,
    }


# --------------------------------------------------------------------------- the benchmark


def run(smoke: bool = False, rounds: int = 2) -> str:
    sweep = SMOKE if smoke else FULL
    rounds = 1 if smoke else rounds
    analyses = per_checkpoint_analyses()
    if sweep["analyses"] is not None:
        analyses = [a for a in analyses if a[0] in sweep["analyses"]]
    hub = hub_dir()
    ckpts = checkpoints(sweep["sizes"], sweep["steps"])
    input_set = {
        "name": "heldout-prose",
        "builtin": "pydoc_topics",
        "split": "heldout",
        "num_sequences": sweep["num_sequences"],
        "seq_len": sweep["seq_len"],
        "seed": 0,
    }
    spec = spec_yaml(
        "bench-fusion",
        sweep["sizes"],
        [0],
        sweep["steps"],
        analyses,
        input_set,
        {"batch_size": BATCH_SIZE},  # otherwise ckptlab's defaults: 1 CPU per worker
    )
    config = {
        "hub": str(hub),
        "checkpoints": ckpts,
        "analyses": analyses,
        "input_set": input_set,
    }
    a_runs, b_runs = [], []
    with tempfile.TemporaryDirectory(prefix="ckptlab-bench-fusion-") as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(COUNTER_SITE)
        for r in range(rounds):
            a_dir, b_dir = Path(tmp) / f"a{r}", Path(tmp) / f"b{r}"
            (a_dir / "counts").mkdir(parents=True)
            (b_dir / "counts").mkdir(parents=True)
            counting = {"CKPTLAB_BENCH_COUNTS": str(a_dir / "counts")}
            a = ckptlab_run(spec, a_dir, hub, extra_path=site, extra_env=counting)
            a["counts"] = read_counts(a_dir / "counts")
            a["values"] = ckptlab_values(a["db"])
            a_runs.append(a)
            env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
            env |= {
                "CKPTLAB_BENCH_COUNTS": str(b_dir / "counts"),
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(site), env.get("PYTHONPATH", "")) if p
                ),
                "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
            b = naive_run(config, b_dir, env)
            b["counts"] = read_counts(b_dir / "counts")
            b_runs.append(b)
            import duckdb

            with duckdb.connect(str(a["db"]), read_only=True) as con:
                a["input_set_ids"] = {
                    model: set_id
                    for model, set_id in con.execute(
                        "SELECT DISTINCT ch.model, c.input_set_id FROM cells c JOIN checkpoints"
                        " ch USING (commit_sha) WHERE c.input_set_id IS NOT NULL"
                    ).fetchall()
                }

    n = len(ckpts)
    seqs = sweep["num_sequences"]
    a_wall = statistics.median(x["wall"] for x in a_runs)
    b_wall = statistics.median(x["wall"] for x in b_runs)
    starts = [startup(x) for x in a_runs]
    a_first = statistics.median(s["to_first_unit"] for s in starts)
    a_ray = statistics.median(s["ray"] for s in starts)
    a_units = a_runs[-1]["units"]
    a_loads, a_passes = per_checkpoint(a_runs[-1]["counts"], n, seqs)
    b_loads, b_passes = per_checkpoint(b_runs[-1]["counts"], n, seqs)
    b = b_runs[-1]
    sec = {k: statistics.median(x["seconds"][k] for x in b_runs) for k in b["seconds"]}
    same_tokens = a_runs[-1]["input_set_ids"] == b["input_set_ids"]
    check = compare(a_runs[-1]["values"], b["rows"])
    walls = lambda runs: ", ".join(f"{x['wall']:.1f}" for x in runs)  # noqa: E731
    unit_rows = len(a_units)
    a_sum = sum(u["load_seconds"] + u["compute_seconds"] for u in a_units)
    a_span = max(u["finished_at"] for u in a_units) - min(u["started_at"] for u in a_units)
    headline = table(
        [
            "side",
            "wall s (median)",
            "walls s",
            "start-up s",
            "loads / checkpoint",
            "forward passes / input set / checkpoint",
        ],
        [
            [
                "(a) ckptlab run",
                f"{a_wall:.1f}",
                walls(a_runs),
                f"{a_first:.1f} to the first unit, of it Ray {a_ray:.1f}",
                f"{a_loads} ({unit_rows} unit rows for {n} checkpoints)",
                a_passes,
            ],
            [
                "(b) naive loop",
                f"{b_wall:.1f}",
                walls(b_runs),
                f"{sec['setup']:.1f} (imports, tokenizing)",
                f"{b_loads} (script: {b['loads'] / n:g})",
                f"{b_passes} (script: {b['forwards'] / n:g})",
            ],
        ],
    )
    # What fusion can save here at best: the loop's own load and forward figures, paid once
    # per checkpoint instead of once per analysis (compute stays).
    mean_load = sec["load"] / b["loads"]
    mean_forward = sec["forward"] / max(1, b["forwards"])
    ideal = b_wall - (b["loads"] - n) * mean_load - (b["forwards"] - n) * mean_forward
    costs = table(
        ["where the time goes", "seconds", "per call"],
        [
            [
                "(b) loop: Σ load (model + tokenizer)",
                f"{sec['load']:.1f}",
                f"{mean_load * 1000:.0f} ms",
            ],
            [
                "(b) loop: Σ forward passes",
                f"{sec['forward']:.1f}",
                f"{mean_forward * 1000:.0f} ms",
            ],
            ["(b) loop: Σ analyses (ckptlab's code)", f"{sec['compute']:.1f}", ""],
            ["(a) ckptlab workers: Σ load + compute", f"{a_sum:.1f}", ""],
            ["(a) ckptlab: first unit's start → last unit's end", f"{a_span:.1f}", ""],
        ],
    )
    ratio = b_wall / a_wall
    agree = (
        f"Same token ids on both sides: {'yes' if same_tokens else 'NO'}. "
        f"{check['joined']} metric values joined on (model, step, analysis, metric, layer, item): "
        f"max |a − b| = {check['max_abs']:.2e}"
        + (f", {check['nan_mismatch']} NaN on one side only" if check["nan_mismatch"] else "")
        + (
            f"; unmatched: {check['only_a']} only in ckptlab, {check['only_b']} only in the loop"
            if check["only_a"] or check["only_b"]
            else ""
        )
        + "."
    )
    one_each = a_loads == "1" and a_passes == "1"
    verdict = (
        f"Naive wall ÷ ckptlab wall = {ratio:.2f}× (issue 23's goal ≥ 1.5×: "
        f"{'holds' if ratio >= 1.5 else 'missed'}; issue 12 asked ≥ 5×), with {a_loads} load "
        f"and {a_passes} forward "
        f"pass per input set per checkpoint (goal 1 and 1: {'holds' if one_each else 'missed'}); "
        f"the loop itself is at most {b_wall / ideal:.1f}× slower than one load and one pass "
        "per checkpoint would make it."
    )
    names = ", ".join(a for a, _ in analyses)
    return "\n\n".join(
        [
            "## Fusion: ckptlab run against the papers' per-analysis loop",
            provenance("python bench/fusion.py" + (" --smoke" if smoke else "")),
            f"The same sweep two ways, interleaved ({', '.join(['A, B'] * rounds)}; medians of "
            f"{rounds}): "
            f"pico {', '.join(sweep['sizes'])} seed 0, {n} checkpoints "
            f"(steps {sweep['steps'] if sweep['steps'] != 'all' else 'all'}), one held-out "
            f"input set of {seqs} × {sweep['seq_len']} tokens, analyses {names} "
            "(every per-checkpoint analysis of specs/seeds.yaml with its params; cka is out: "
            "it compares with another checkpoint; icl is out: its own prompts, not this input "
            "set). (a) `ckptlab run` as a user runs it: the CLI in a fresh process, a private "
            "local Ray with ckptlab's default workers (1 CPU each, 2 on this machine), fresh "
            f"results DB and MLflow sqlite store, batch {BATCH_SIZE}. (b) A loop in this file: "
            "per analysis, per checkpoint: `from_pretrained` of model and tokenizer, one forward "
            "pass over the whole input set with `output_hidden_states=True` (and that analysis' "
            "hooks; none for singular_entropy, which reads only weights), the analysis by "
            "ckptlab's own code on that capture; torch's default threads (2). Both read the "
            "checkpoints from the same hub cache. Loads and forward passes are counted on both "
            "sides by one instrument (a sitecustomize wrapping from_pretrained and "
            "GPTNeoXModel.forward in every process, Ray's workers included).",
            headline,
            costs,
            agree,
            verdict,
        ]
    )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--naive":  # a child: the loop
        workdir = Path(sys.argv[2])
        result = naive(json.loads((workdir / "config.json").read_text()))
        (workdir / "result.json").write_text(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="3 checkpoints, ~1 minute")
    parser.add_argument("--rounds", type=int, default=2, help="A, B pairs; medians")
    args = parser.parse_args()
    print(run(smoke=args.smoke, rounds=max(1, args.rounds)))


if __name__ == "__main__":
    main()
