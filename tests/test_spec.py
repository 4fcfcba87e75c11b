"""Spec validation: every shipped spec, step selectors, and a table of malformed specs."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ckptlab.catalog import SUITES, pico_schedule, pythia_schedule
from ckptlab.spec import SpecError, load_spec, parse_spec, select_steps

SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_every_shipped_spec_validates(path):
    spec = load_spec(path)
    assert spec.name and spec.analyses and spec.models
    assert len(spec.spec_hash()) == 64


def test_pythia_schedule_is_the_real_one():
    schedule = pythia_schedule()
    assert len(schedule) == 154
    assert schedule[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert schedule[-1] == 143_000 and 142_500 not in schedule
    assert SUITES["pythia"].repo_id("70m") == "EleutherAI/pythia-70m"
    assert SUITES["pythia"].repo_id("160m", seed=3) == "EleutherAI/pythia-160m-seed3"
    assert SUITES["pythia"].repo_id("1b", deduped=True) == "EleutherAI/pythia-1b-deduped"
    assert pico_schedule(250) == [0, 1, 2, 4, 8, 16, 32, 64, 100, 200]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("all", pythia_schedule()),
        ([0, 1000, 143000], [0, 1000, 143000]),
        ({"every": 50000}, [0, 50000, 100000]),
        ({"every": 1000, "start": 140000}, [140000, 141000, 142000, 143000]),
        ({"log_until": 16}, [0, 1, 2, 4, 8, 16]),
        (
            [{"log_until": 4}, {"every": 70000, "start": 3000}, 512],
            [0, 1, 2, 4, 512, 3000, 73000, 143000],
        ),
    ],
)
def test_step_selectors(selector, expected):
    spec = parse_spec(_base(models=[{"suite": "pythia", "sizes": ["70m"], "steps": selector}]))
    assert select_steps(spec.models[0].steps, pythia_schedule(), "steps") == sorted(expected)


def _base(**overrides) -> dict:
    spec = {
        "name": "t",
        "models": [{"suite": "pico", "sizes": ["xs"], "steps": [0, 100]}],
        "input_sets": [{"name": "prose", "builtin": "pydoc_topics"}],
        "analyses": [{"name": "anisotropy"}],
    }
    spec.update(copy.deepcopy(overrides))
    return spec


MALFORMED = [
    ({"colour": "red"}, "colour: unknown field"),
    ({"name": "has space"}, "name: String should match pattern"),
    ({"models": []}, "models: List should have at least 1 item"),
    ({"models": [{"suite": "gpt9", "sizes": ["xs"]}]}, "models[0].suite: unknown suite 'gpt9'"),
    ({"models": [{"suite": "pythia", "sizes": ["70m", "7b"]}]}, "models[0].sizes[1]: unknown size"),
    ({"models": [{"suite": "pico", "sizes": ["xs"], "seeds": [12]}]}, "models[0].seeds[0]"),
    ({"models": [{"suite": "pico", "sizes": ["xs"], "deduped": True}]}, "models[0].deduped"),
    ({"models": [{"suite": "pico", "sizes": ["xs"], "steps": [5]}]}, "models[0].steps[0]: step 5"),
    (
        {
            "models": [
                {"suite": "pico", "sizes": ["xs"], "steps": {"every": 5, "start": 9, "stop": 1}}
            ]
        },
        "models[0].steps: stop (1) is before start (9)",
    ),
    (
        {
            "models": [
                {"suite": "pico", "sizes": ["xs"], "steps": {"every": 7, "start": 101, "stop": 199}}
            ]
        },
        "models[0].steps: selects no checkpoint",
    ),
    (
        {"models": [{"suite": "pico", "sizes": ["xs"], "steps": "most"}]},
        "models[0].steps: expected",
    ),
    (
        {"models": [{"suite": "pico", "sizes": "xs"}]},
        "models[0].sizes: Input should be a valid list",
    ),
    ({"models": [{"suite": "pico", "sizes": ["xs"], "size": 1}]}, "models[0].size: unknown field"),
    ({"models": [{"sizes": ["xs"]}]}, "models[0]: a model entry needs one of"),
    ({"models": [{"repo": "org/m", "revisions": ["main"]}]}, "models[0].revisions[0]: cannot read"),
    ({"models": [{"path": "/no/such/dir"}]}, "models[0].path: no such directory"),
    ({"analyses": [{"name": "anisotrophy"}]}, "analyses[0].name: unknown analysis 'anisotrophy'"),
    ({"analyses": [{"name": "anisotropy", "params": {"drop": 1}}]}, "analyses[0].params.drop"),
    (
        {"analyses": [{"name": "anisotropy", "params": {"drop_first_position": "perhaps"}}]},
        "analyses[0].params.drop_first_position: Input should be a valid boolean",
    ),
    ({"analyses": [{"name": "anisotropy"}, {"name": "anisotropy"}]}, "analyses[1]: same analysis"),
    (
        {"analyses": [{"name": "saturation", "label": "a"}, {"name": "saturation", "label": "b"}]},
        "analyses[1]: same analysis and params as analyses[0]",
    ),
    (
        {
            "analyses": [
                {"name": "anisotropy", "params": {"drop_first_position": True}},
                {"name": "anisotropy", "params": {"drop_first_position": True}, "label": "again"},
            ]
        },
        "analyses[1]: same analysis and params as analyses[0]",
    ),
    (
        {"analyses": [{"name": "saturation", "label": "x"}, {"name": "anisotropy", "label": "x"}]},
        "analyses[1]: duplicate analysis 'x'",
    ),
    ({"input_sets": []}, "analyses[0]: anisotropy runs the model on inputs"),
    ({"input_sets": [{"name": "a"}]}, "input_sets[0]: give exactly one of"),
    ({"input_sets": [{"name": "a", "builtin": "wiki"}]}, "input_sets[0].builtin: Input should be"),
    ({"input_sets": [{"name": "a", "file": "/no/file.txt"}]}, "input_sets[0].file: no such file"),
    ({"input_sets": [{"name": "a", "builtin": "pydoc_topics", "seq_len": 1}]}, "seq_len"),
    (
        {"input_sets": [{"name": "a", "builtin": "pydoc_topics"}] * 2},
        "input_sets[1].name: duplicate",
    ),
    ({"resources": {"batch_size": 0}}, "resources.batch_size: Input should be greater than 0"),
    ({"resources": {"dtype": "fp8"}}, "resources.dtype: Input should be 'float32'"),
    ({"resources": {"gpus_per_worker": "one"}}, "resources.gpus_per_worker"),
    ({"loading": {"trust_remote_code": "yes please"}}, "loading.trust_remote_code"),
]


@pytest.mark.parametrize(("overrides", "message"), MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_specs_name_the_field(overrides, message):
    with pytest.raises(SpecError) as caught:
        parse_spec(_base(**overrides))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_yaml_errors_and_non_mappings(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodels: [unclosed\n")
    with pytest.raises(SpecError, match="invalid YAML at line"):
        load_spec(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="YAML mapping"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_base(analyses=[{"name": "nope"}])))
    home = tmp_path / "home"
    env = {"CKPTLAB_HOME": str(home), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    for command in ("validate", "plan", "run"):
        done = subprocess.run(
            [sys.executable, "-m", "ckptlab", command, str(bad)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert done.returncode == 2, (command, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "analyses[0].name: unknown analysis 'nope'" in lines[0]
    assert not home.exists()


def test_equal_specs_hash_equal_and_defaults_are_explicit():
    a = parse_spec(_base())
    b = parse_spec(_base(resources={"batch_size": 8}))  # the default, written out
    c = parse_spec(_base(resources={"batch_size": 4}))
    assert a.spec_hash() == b.spec_hash() != c.spec_hash()
