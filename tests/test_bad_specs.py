"""Bad input: malformed specs of many kinds through the real CLI, the shipped specs through
`validate` and `plan`, and fuzzing of the spec parser, the spec reader and the CLI.

A bad spec exits 2 with one line on stderr naming the field (or, for a file that is not a
spec at all, what is wrong with the file), no traceback, and nothing written anywhere."""

from __future__ import annotations

import copy
import math
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ckptlab.catalog import SUITES
from ckptlab.cli import app
from ckptlab.spec import MAX_SPEC_BYTES, SpecError, SuiteModels, load_spec, parse_spec, select_steps

from conftest import PICO_MAX_STEP, PICO_SIZES

SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.yaml"))

BROKEN_TASK = str(Path(__file__).parent / "data" / "lm_eval_task_not_yaml.yaml")

# The smallest spec that validates; each kind below breaks one thing of it.
BASE = {
    "name": "bad",
    "models": [{"suite": "pico", "sizes": ["xs"], "steps": [0, 100]}],
    "input_sets": [{"name": "prose", "builtin": "pydoc_topics", "num_sequences": 2, "seq_len": 16}],
    "analyses": [{"name": "anisotropy"}],
}


def spec(**overrides) -> str:
    return yaml.safe_dump(copy.deepcopy(BASE) | copy.deepcopy(overrides), sort_keys=False)


def pico(**fields) -> list[dict]:
    return [{"suite": "pico", "sizes": ["xs"], "steps": [0, 100]} | fields]


def inputs(**fields) -> list[dict]:
    return [BASE["input_sets"][0] | fields]


def nested(depth: int) -> str:
    return "name: t\nmodels: " + "[" * depth + "]" * depth + "\n"


def alias_bomb(levels: int = 9) -> str:
    """A description whose nine levels each list the previous one ten times: 10**9 strings
    once the aliases are resolved. PyYAML resolves them as references, so only a walk over
    the whole value (an error message quoting it in full) would take forever."""
    rows = ["  - &l0 [" + ", ".join(["lol"] * 10) + "]"]
    rows += [f"  - &l{n} [" + ", ".join([f"*l{n - 1}"] * 10) + "]" for n in range(1, levels + 1)]
    return spec() + "description:\n" + "\n".join(rows) + "\n"


DIRECTORY = "<a directory>"
NOTHING = "<no file>"


@dataclass(frozen=True)
class Kind:
    name: str
    content: str | bytes  # the spec file's content, or DIRECTORY / NOTHING
    expect: str  # found in the one stderr line: the field path and what is wrong
    at_plan: bool = False  # known only once `plan` reads the model's config


KINDS = [
    # --- the file: not readable, not text, not YAML, not a mapping
    Kind("bad YAML", "name: x\nmodels: [unclosed\n", "invalid YAML at line 3, column 1"),
    Kind("a tab as indentation", "name: t\nmodels:\n\t- suite: pico\n", "invalid YAML at line 3"),
    Kind("an empty file", "", "the spec is empty"),
    Kind("binary garbage", random.Random(0).randbytes(4096), "not UTF-8 text: byte 0x"),
    Kind(
        "a non-UTF-8 (Latin-1) file",
        spec().replace("name: bad\n", "name: bad\ndescription: café\n").encode("latin-1"),
        "not UTF-8 text: byte 0xe9 at line 2",
    ),
    Kind("a NUL byte", "name: t\x00\n", "invalid YAML at line 1: character #x0000"),
    Kind(
        "a list at the root",
        "- name: t\n- models: []\n",
        "YAML mapping at the top level (got a list)",
    ),
    Kind("a scalar at the root", "42\n", "YAML mapping at the top level (got a number)"),
    Kind("two YAML documents", "name: a\n---\nname: b\n", "expected a single document"),
    Kind(
        "a key given twice", spec() + "analyses: []\n", "'analyses' is given twice (first at line"
    ),
    Kind(
        "a Python object tag",
        'name: !!python/object/apply:os.system ["touch pwned"]\n',
        "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply",
    ),
    Kind("10,000 nested lists", nested(10_000), "invalid YAML: nested too deeply"),
    Kind(
        "a 10 MB file",
        spec() + "#" * (10 * 2**20 - len(spec()) - 1) + "\n",
        "spec file is 10.0 MB; the limit is 1 MB",
    ),
    Kind("a directory", DIRECTORY, "is a directory, not a spec file"),
    Kind("a nonexistent path", NOTHING, "spec.yaml: No such file or directory"),
    Kind("a YAML alias bomb", alias_bomb(), "description: Input should be a valid string"),
    Kind(
        "an impossible date",
        spec(name="x").replace("name: x", "name: 2024-13-45"),
        "invalid YAML at line 1, column 7: cannot read '2024-13-45': month must be in 1..12",
    ),
    # --- fields and names
    Kind("an unknown top-level field", spec(colour="red"), "colour: unknown field"),
    Kind(
        "a missing required field",
        spec().replace("analyses:\n- name: anisotropy\n", ""),
        "analyses: Field required",
    ),
    Kind(
        "an unknown analysis",
        spec(analyses=[{"name": "anisotrophy"}]),
        "analyses[0].name: unknown analysis 'anisotrophy'",
    ),
    Kind(
        "an unknown analysis parameter",
        spec(analyses=[{"name": "anisotropy", "params": {"drop": 1}}]),
        "analyses[0].params.drop: unknown field",
    ),
    Kind(
        "an unknown suite",
        spec(models=[{"suite": "gpt9", "sizes": ["xs"]}]),
        "models[0].suite: unknown suite 'gpt9'",
    ),
    Kind(
        "an unknown size",
        spec(models=pico(sizes=["xxl"])),
        "models[0].sizes[0]: unknown size 'xxl' for suite pico",
    ),
    Kind("a field name with markup", spec() + '"[/red]": 1\n', "['[/red]']: unknown field"),
    Kind("a field name with a line break", spec() + '"a\\nb": 1\n', "['a\\nb']: unknown field"),
    Kind("a non-string field name", spec() + "1: one\n", "field names are strings (got 1)"),
    # --- checkpoint steps
    Kind(
        "a step not in the schedule",
        spec(models=pico(steps=[0, 5])),
        "models[0].steps[1]: step 5 is not a checkpoint (nearest: [4, 8])",
    ),
    Kind(
        "a negative step",
        spec(models=pico(steps=[-1])),
        "models[0].steps[0]: Input should be greater than or equal to 0 (got -1)",
    ),
    Kind(
        "a negative range",
        spec(models=pico(steps={"every": 10, "start": -50})),
        "models[0].steps.start: Input should be greater than or equal to 0 (got -50)",
    ),
    Kind(
        "a reversed range",
        spec(models=pico(steps={"every": 10, "start": 50, "stop": 10})),
        "models[0].steps: stop (10) is before start (50)",
    ),
    Kind(
        "a range of no checkpoint",
        spec(models=pico(steps={"every": 7, "start": 101, "stop": 199})),
        "models[0].steps: selects no checkpoint of this suite",
    ),
    Kind(
        "a step_pattern that is no regex",
        spec(models=[{"repo": "org/m", "revisions": ["step1"], "step_pattern": "step(\\d+"}]),
        "models[0].step_pattern: not a regular expression: missing ),",
    ),
    # --- wrong types
    Kind("a list for a string", spec(name=["a", "b"]), "name: Input should be a valid string"),
    Kind(
        "a string for a list",
        spec(models=pico(sizes="xs")),
        "models[0].sizes: Input should be a valid list (got 'xs')",
    ),
    Kind(
        "a word for an integer",
        spec(input_sets=inputs(num_sequences="many")),
        "input_sets[0].num_sequences: Input should be a valid integer",
    ),
    Kind(
        "a fraction for an integer",
        spec(resources={"batch_size": 2.5}),
        "resources.batch_size: Input should be a valid integer, got a number with a fractional",
    ),
    Kind(
        "a mapping for a list",
        spec(analyses={"name": "anisotropy"}),
        "analyses: Input should be a valid list",
    ),
    Kind(
        "a word for a boolean",
        spec(analyses=[{"name": "anisotropy", "params": {"drop_first_position": "perhaps"}}]),
        "analyses[0].params.drop_first_position: Input should be a valid boolean",
    ),
    Kind(
        "an infinite number",
        spec(resources={"cpus_per_worker": math.inf}),
        "resources.cpus_per_worker: Input should be a finite number (got inf)",
    ),
    Kind("a 500 KB value", spec(name="x y" * 170_000), "name: String should match pattern"),
    Kind(
        "an unknown lm-eval task",
        spec(analyses=[{"name": "lm_eval", "params": {"tasks": ["no_such_task"]}}]),
        "analyses[0].params: unknown lm-eval task 'no_such_task'",
    ),
    Kind(
        "an lm-eval task file that is not YAML",
        spec(
            analyses=[
                {"name": "lm_eval", "params": {"tasks": ["broken"], "task_files": [BROKEN_TASK]}}
            ]
        ),
        f"analyses[0].params: task file {BROKEN_TASK}: not valid YAML (line 3)",
    ),
    # --- models listed twice
    Kind(
        "the same model in two entries",
        spec(models=pico() + pico(sizes=["s", "xs"])),
        "models[1].sizes[1]: pico/pico-xs is already listed in models[0]",
    ),
    Kind(
        "a size listed twice",
        spec(models=pico(sizes=["xs", "s", "xs"])),
        "models[0].sizes[2]: 'xs' is listed twice (also sizes[0])",
    ),
    # --- input sets
    Kind(
        "a missing input file",
        spec(input_sets=[{"name": "f", "file": "/no/such/corpus.txt"}]),
        "input_sets[0].file: no such file: /no/such/corpus.txt",
    ),
    Kind(
        "seq_len 0",
        spec(input_sets=inputs(seq_len=0)),
        "input_sets[0].seq_len: Input should be greater than or equal to 2 (got 0)",
    ),
    Kind(
        "seq_len beyond the model's context",
        spec(input_sets=inputs(seq_len=512)),
        "input_sets[0].seq_len: 512 tokens is beyond the context of pico/pico-xs (128 positions)",
        at_plan=True,
    ),
]

# Some kinds again as real processes (exit code and stderr as a shell sees them), one of each
# layer that can fail: the file, YAML, the schema and semantics (`run`, as the user types it),
# the plan. Few: a process that gets as far as the analyses registry takes seconds to start.
AS_PROCESS = {
    "binary garbage": ("validate",),
    "10,000 nested lists": ("validate",),
    "a key given twice": ("validate",),
    "an unknown analysis": ("run",),
    "seq_len beyond the model's context": ("plan",),
}


def write_kind(kind: Kind, work: Path) -> Path:
    path = work / "spec.yaml"
    if kind.content is DIRECTORY:
        path.mkdir()
    elif kind.content is NOTHING:
        pass
    elif isinstance(kind.content, bytes):
        path.write_bytes(kind.content)
    else:
        path.write_text(kind.content, encoding="utf-8")
    return path


def cli_args(command: str, path: Path, work: Path) -> list[str]:
    args = [command, str(path)]
    if command in ("plan", "run"):
        args += ["--db", str(work / "r.duckdb")]
    if command == "run":
        args += ["--tracking-uri", f"sqlite:///{work / 'm.db'}"]
    return args


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root, with size and modification time."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if not p.is_symlink()
    }


def verdict(kind: Kind, command: str, code: int, stdout: str, stderr: str) -> str | None:
    """None when the call did what a bad spec must; else what went wrong."""
    lines = stderr.strip().splitlines()
    if code != 2:
        return f"{kind.name}/{command}: exit {code}: {(stdout + stderr)[-300:]!r}"
    if "Traceback" in stdout + stderr:
        return f"{kind.name}/{command}: a traceback"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"{kind.name}/{command}: {len(lines)} lines on stderr: {stderr[:300]!r}"
    if kind.expect not in lines[0]:
        return f"{kind.name}/{command}: {lines[0][:300]!r} lacks {kind.expect!r}"
    if len(lines[0]) > 400:  # one line, and a readable one
        return f"{kind.name}/{command}: a {len(lines[0])}-character line"
    return None


def test_malformed_specs_exit_2_with_one_line_and_write_nothing(
    tmp_path, monkeypatch, pico_hub, ckptlab_home, reliability
):
    assert len({k.name for k in KINDS}) == len(KINDS) >= 30
    runner = CliRunner()
    problems: list[str] = []
    failed: set[str] = set()  # kinds with a problem
    calls = processes = 0
    written: list[str] = []
    slowest = 0.0

    def workplace(n: int, kind: Kind) -> tuple[Path, Path, Path]:
        work = tmp_path / f"{n:02d}"
        work.mkdir()
        # A plan-time kind needs the pico models (the session's home); the others get a home
        # of their own that must never come into being.
        home = ckptlab_home if kind.at_plan else work / "home"
        return work, write_kind(kind, work), home

    for n, kind in enumerate(KINDS):
        work, path, home = workplace(n, kind)
        before, home_before = files_under(work), files_under(home)
        monkeypatch.chdir(work)  # a relative write would land here
        monkeypatch.setenv("CKPTLAB_HOME", str(home))
        if kind.at_plan:  # validate cannot know the model's context, plan and run must
            ok = runner.invoke(app, ["validate", str(path)])
            if ok.exit_code != 0:
                problems.append(f"{kind.name}/validate: exit {ok.exit_code}: {ok.output!r}")
                failed.add(kind.name)
        for command in ("plan", "run") if kind.at_plan else ("validate", "run"):
            started = time.perf_counter()
            result = runner.invoke(app, cli_args(command, path, work))
            slowest = max(slowest, time.perf_counter() - started)
            calls += 1
            problem = verdict(kind, command, result.exit_code, result.stdout, result.stderr)
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                problem = f"{kind.name}/{command}: raised {result.exception!r}"
            if problem:
                problems.append(problem)
                failed.add(kind.name)
        written += [f"{kind.name}: {p}" for p in files_under(work).keys() - before.keys()]
        if files_under(home) != home_before:
            written.append(f"{kind.name}: {home} changed")
    monkeypatch.undo()

    def as_process(job: tuple[int, Kind, str]):
        n, kind, command = job
        work = tmp_path / f"p{n:02d}-{command}"
        work.mkdir()
        path = write_kind(kind, work)
        home = ckptlab_home if kind.at_plan else work / "home"
        env = os.environ | {"CKPTLAB_HOME": str(home)}
        done = subprocess.run(
            [sys.executable, "-m", "ckptlab", *cli_args(command, path, work)],
            capture_output=True,
            text=True,
            cwd=work,
            env=env,
            timeout=120,
        )
        left = sorted(files_under(work).keys() - {"spec.yaml"})
        return kind, command, done, left, work

    by_name = {k.name: (n, k) for n, k in enumerate(KINDS)}
    jobs = [(*by_name[name], c) for name, commands in AS_PROCESS.items() for c in commands]
    home_before = files_under(ckptlab_home)
    with ThreadPoolExecutor(2) as pool:
        for kind, command, done, left, work in pool.map(as_process, jobs):
            processes += 1
            problem = verdict(kind, command, done.returncode, done.stdout, done.stderr)
            if problem:
                problems.append(f"process {problem}")
                failed.add(kind.name)
            written += [f"{kind.name} (process): {p}" for p in left]
            if (work / "home").exists():
                written.append(f"{kind.name} (process): created {work / 'home'}")
    if files_under(ckptlab_home) != home_before:
        written.append("a process changed the session's CKPTLAB_HOME")

    passed = len(KINDS) - len(failed)
    reliability.row(
        "Bad input",
        f"{len(KINDS)} kinds of malformed spec through `ckptlab validate`/`plan`/`run` "
        f"({calls} in-process calls, {processes} as processes)",
        f"{passed}/{len(KINDS)} kinds exit 2 with one stderr line naming the field, no "
        f"traceback; {len(problems)} bad calls; {len(written)} files written; slowest call "
        f"{slowest:.1f}s",
        rows_lost=None,
    )
    assert problems == [], "\n".join(problems)
    assert written == []
    assert not list(tmp_path.rglob("pwned"))  # the Python tag ran nothing


def plan_expectation(path: Path) -> tuple[int, int]:
    """(checkpoints, those the fixture's pico hub holds) of a shipped spec."""
    total = resolvable = 0
    for source in load_spec(path).models:
        assert isinstance(source, SuiteModels)
        suite = SUITES[source.suite]
        steps = select_steps(source.steps, list(suite.schedule), "steps")
        count = len(source.sizes) * len(source.seeds) * len(steps)
        total += count
        if source.suite == "pico":
            held = [s for s in source.sizes if s in PICO_SIZES]
            seeds = [s for s in source.seeds if s == 0]
            resolvable += len(held) * len(seeds) * len([s for s in steps if s <= PICO_MAX_STEP])
    return total, resolvable


def test_every_shipped_spec_that_validates_also_plans(tmp_path, pico_hub, reliability):
    """With the fixture's pico hub (sizes xs and s, steps up to 100) and no network: a
    checkpoint the hub cache lacks is one 'unresolved' line per model, never a failure."""
    runner = CliRunner()
    problems, summary = [], Counter()
    for path in SPECS:
        checked = runner.invoke(app, ["validate", str(path)])
        planned = runner.invoke(app, ["plan", str(path), "--db", str(tmp_path / "r.duckdb")])
        total, resolvable = plan_expectation(path)
        summary["specs"] += 1
        summary["validate ok"] += checked.exit_code == 0
        summary["plan ok"] += planned.exit_code == 0
        summary["checkpoints"] += total
        summary["resolved"] += resolvable
        if checked.exit_code != 0 or planned.exit_code != 0 or "Traceback" in planned.output:
            problems.append(f"{path.name}: validate {checked.exit_code}, plan {planned.exit_code}")
            problems.append(planned.output[-500:])
            continue
        found = re.search(r"(\d+) checkpoints \(\d+ with work\)", planned.output)
        unresolved = re.search(r"; (\d+) checkpoints unresolved", planned.output)
        got = (int(found[1]) if found else None, int(unresolved[1]) if unresolved else 0)
        if got != (total, total - resolvable):
            problems.append(
                f"{path.name}: (checkpoints, unresolved) {got}, not {(total, total - resolvable)}"
            )
        lines = [ln for ln in planned.output.splitlines() if ln.startswith("unresolved ")]
        models = [ln.split(":")[0] for ln in lines]
        if len(models) != len(set(models)) or not all(
            "not in the local hub cache" in ln for ln in lines
        ):
            problems.append(f"{path.name}: unresolved lines {lines}")
    assert not (tmp_path / "r.duckdb").exists()  # planning writes no results DB
    reliability.row(
        "Bad input",
        f"the {summary['specs']} shipped specs through `ckptlab validate` then `plan` "
        "(fixture pico hub, Pythia offline)",
        f"{summary['validate ok']}/{summary['specs']} validate, {summary['plan ok']}/"
        f"{summary['specs']} plan (exit 0); {summary['resolved']} of {summary['checkpoints']} "
        "checkpoints resolved, the rest one 'unresolved' line per model; no traceback",
        rows_lost=None,
    )
    assert problems == [], "\n".join(problems)
    assert summary["specs"] == len(SPECS) >= 3


# ----------------------------------------------------------------------------------- fuzz

FIELDS = [
    "name", "description", "models", "input_sets", "analyses", "resources", "storage",
    "loading", "suite", "sizes", "seeds", "deduped", "steps", "every", "start", "stop",
    "log_until", "repo", "revisions", "step_pattern", "path", "builtin", "file", "hub",
    "split", "num_sequences", "seq_len", "seed", "params", "label", "batch_size", "dtype",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["all", "pico", "xs", "pythia", "70m", "anisotropy", "step100", "a/b"])
)
keys = st.sampled_from(FIELDS) | st.text(max_size=8) | st.integers() | st.none() | st.booleans()
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)

# Valid, and touching every part of the schema: the base the mutations below start from.
RICH = {
    "name": "rich",
    "description": "every kind of field",
    "models": [
        {"suite": "pico", "sizes": ["xs", "s"], "seeds": [0, 1],
         "steps": [0, {"every": 50, "start": 0, "stop": 100}, {"log_until": 8}]},
        {"suite": "pythia", "sizes": ["70m"], "deduped": True, "steps": {"log_until": 4}},
        {"repo": "org/model", "revisions": ["step100", "step200"], "step_pattern": "step(\\d+)"},
    ],
    "input_sets": [
        {"name": "prose", "builtin": "pydoc_topics", "split": "heldout", "num_sequences": 4,
         "seq_len": 16, "seed": 1},
        {"name": "code", "builtin": "stdlib_code", "split": "all"},
    ],
    "analyses": [
        {"name": "saturation"},
        {"name": "anisotropy", "label": "nofirst", "params": {"drop_first_position": True}},
        {"name": "cka", "params": {"max_tokens": 1024}},
        {"name": "head_rank_proxy", "params": {"ranks": [1, 2, 4]}},
        {"name": "icl", "params": {"shots": [0, 2], "tasks": [{"data": "category"}]}},
    ],
    "resources": {"workers": 2, "cpus_per_worker": 1.5, "gpus_per_worker": "auto",
                  "dtype": "bfloat16", "batch_size": 4, "memory_limit_gib": 2},
    "storage": {"db": "results.duckdb"},
    "loading": {"trust_remote_code": False},
}  # fmt: skip

# Copied when drawn (below): a mutation must not edit these shared constants.
odd_values = json_like | st.sampled_from(
    [-1, 0, 2**63, 1.5, math.inf, math.nan, "", "x" * 200, [], {}, [0, 0], {"every": 0},
     {"log_until": -1}, "pico", "step(", "[/red]", "a\nb", "\x00"]
)  # fmt: skip


def paths_of(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths_of(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from paths_of(value, (*prefix, i))


@st.composite
def mutated(draw) -> dict:
    """RICH with one to four random edits: a value replaced, a key dropped, a key added, a
    value wrapped in a list, a list entry duplicated."""
    data = copy.deepcopy(RICH)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(list(paths_of(data))))
        parent, last = data, None
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1] if path else None
        target = parent[last] if path else data
        op = draw(st.sampled_from(["replace", "drop", "add", "wrap", "duplicate"]))
        if op == "replace" and path:
            parent[last] = copy.deepcopy(draw(odd_values))
        elif op == "drop" and path:
            del parent[last]
        elif op == "add" and isinstance(target, dict):
            target[draw(keys)] = copy.deepcopy(draw(odd_values))
        elif op == "wrap" and path:
            parent[last] = [parent[last]]
        elif op == "duplicate" and isinstance(target, list) and target:
            target.append(copy.deepcopy(draw(st.sampled_from(target))))
    return data


def one_line(err: Exception) -> bool:
    text = str(err)
    return len(text.splitlines()) == 1 and len(text) < 1000


def test_fuzz_parse_spec_raises_only_spec_errors(reliability):
    assert parse_spec(RICH).name == "rich"  # the mutations start from a valid spec
    seen = Counter()

    @settings(max_examples=500, deadline=None, database=None)
    @given(st.one_of(json_like, mutated()))
    def check(data):
        seen["examples"] += 1
        try:
            spec = parse_spec(data)
        except SpecError as err:
            seen["SpecError"] += 1
            assert one_line(err), str(err)
        else:
            seen["valid"] += 1
            assert len(spec.spec_hash()) == 64  # `validate` prints it: it must not fail

    try:
        check()
    finally:
        reliability.row(
            "Bad input",
            "fuzzed `parse_spec`: random JSON-like trees, and a valid spec with random edits",
            f"{seen['examples']} examples: {seen['SpecError']} one-line SpecErrors, "
            f"{seen['valid']} valid, {seen['examples'] - seen['SpecError'] - seen['valid']} "
            "other exceptions",
            rows_lost=None,
        )
    assert seen["SpecError"] + seen["valid"] == seen["examples"] >= 500
    assert seen["SpecError"] > 0 and seen["valid"] > 0


YAML_TOKENS = [
    "name", "models", "analyses", ":", ": ", "- ", "\n", "  ", "\t", "[", "]", "{", "}", ",",
    "&a ", "*a", "*b", "<<: ", "!!str ", "!!int ", "!!binary ", "!!set ", "!!python/name:os ",
    "? ", "---", "...", "'", '"', "#", "|", ">", "%YAML 1.1", "2024-13-45", "1e999", ".nan",
    "0x1F", "~", "true", "pico", "\\", "\ufeff", "\x85", "\u2028",
]  # fmt: skip
yaml_text = st.lists(st.sampled_from(YAML_TOKENS) | st.text(max_size=4), max_size=40).map("".join)


def test_fuzz_load_spec_raises_only_spec_errors(tmp_path, reliability):
    path = tmp_path / "fuzz.yaml"
    seen = Counter()

    @settings(max_examples=400, deadline=None, database=None)
    @given(st.one_of(st.binary(max_size=300), st.text(max_size=300), yaml_text))
    def check(content):
        seen["examples"] += 1
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        try:
            spec = load_spec(path)
        except SpecError as err:
            seen["SpecError"] += 1
            assert one_line(err), str(err)
        else:
            seen["valid"] += 1
            spec.spec_hash()

    try:
        check()
    finally:
        reliability.row(
            "Bad input",
            "fuzzed `load_spec`: random bytes, random text, random YAML-token soup in a file",
            f"{seen['examples']} examples: {seen['SpecError']} one-line SpecErrors, "
            f"{seen['examples'] - seen['SpecError'] - seen['valid']} other exceptions",
            rows_lost=None,
        )
    assert seen["SpecError"] == seen["examples"] >= 400  # none of it is a whole spec
    # the limit is what load_spec enforces, not a number the test made up
    assert MAX_SPEC_BYTES == 2**20


def test_fuzz_cli_exits_2_without_traceback(tmp_path, monkeypatch, reliability):
    runner = CliRunner()
    work = tmp_path / "work"
    work.mkdir()
    path = work / "spec.yaml"
    monkeypatch.chdir(work)
    monkeypatch.setenv("CKPTLAB_HOME", str(work / "home"))
    seen = Counter()
    bad: list[str] = []

    @settings(max_examples=30, deadline=None, database=None)
    @given(
        st.sampled_from(["validate", "plan", "run"]),
        st.one_of(st.binary(max_size=200), yaml_text, json_like.map(yaml.safe_dump)),
    )
    def check(command, content):
        seen["examples"] += 1
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        result = runner.invoke(app, cli_args(command, path, work))
        kind = Kind("fuzz", content, "error: ")
        problem = verdict(kind, command, result.exit_code, result.stdout, result.stderr)
        if problem or sorted(p.name for p in work.iterdir()) != ["spec.yaml"]:
            bad.append(problem or f"{command}: wrote {sorted(work.iterdir())}")
        seen["exit 2"] += result.exit_code == 2

    try:
        check()
    finally:
        reliability.row(
            "Bad input",
            "fuzzed the CLI: `validate`/`plan`/`run` on random bytes, YAML soup, random trees",
            f"{seen['examples']} examples: {seen['exit 2']} exit 2 with one line, no "
            f"traceback; {len(bad)} otherwise",
            rows_lost=None,
        )
    assert bad == []
    assert seen["exit 2"] == seen["examples"] >= 30


def test_validate_never_downloads_hub_task_data(tmp_path, monkeypatch):
    """ICL task data on the hub, not cached: validate says it did not check it (one note) and
    exits 0, with the hub client offline (no request, no retries) and nothing written."""
    task = {"data": {"hub": "someone/sometask", "filename": "data.jsonl"}, "name": "hubtask"}
    path = tmp_path / "spec.yaml"
    path.write_text(spec(analyses=[{"name": "icl", "params": {"tasks": [task]}}]))
    home = tmp_path / "home"
    monkeypatch.setenv("CKPTLAB_HOME", str(home))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [
        "note: not checked, analyses[0].params: task 'hubtask': dataset someone/sometask/"
        f"data.jsonl: not in the local hub cache ({home / 'hub'}) and the hub is offline or "
        "unreachable"
    ]
    assert "ok" in result.stdout and not home.exists()
