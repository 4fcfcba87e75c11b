"""The pico suite: published into a local hub cache that the real hub code path resolves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download
from transformers import AutoModelForCausalLM

from ckptlab.catalog import pico_schedule
from ckptlab.pico.build import PicoRecipe, build_pico
from ckptlab.pico.publish import published_revisions
from ckptlab.weights import repo_cache_folder

from conftest import PICO_MAX_STEP, PICO_SIZES


def test_every_scheduled_step_is_published_with_a_clean_ref(pico_hub):
    for size in PICO_SIZES:
        repo = f"pico/pico-{size}"
        assert published_revisions(pico_hub, repo) == {
            f"step{s}" for s in pico_schedule(PICO_MAX_STEP)
        }
        for ref in (repo_cache_folder(pico_hub, repo) / "refs").iterdir():
            # A trailing newline breaks snapshot_download: exactly 40 hex characters.
            assert re.fullmatch(r"[0-9a-f]{40}", ref.read_text()), ref


def test_the_hub_code_path_loads_revisions_offline(pico_hub):
    folder = snapshot_download(
        "pico/pico-s", revision="step64", cache_dir=pico_hub, local_files_only=True
    )
    ref = (repo_cache_folder(pico_hub, "pico/pico-s") / "refs" / "step64").read_text()
    assert folder.endswith(ref)
    model = AutoModelForCausalLM.from_pretrained(
        "pico/pico-s", revision="step64", cache_dir=pico_hub, local_files_only=True
    )
    assert type(model).__name__ == "GPTNeoXForCausalLM"
    assert model.config.hidden_size == 64 and not model.config.tie_word_embeddings
    metadata = json.loads(Path(folder, "pico_build.json").read_text())
    assert metadata["step"] == 64 and metadata["repo"] == "pico/pico-s"


def test_training_loss_falls_across_checkpoints(pico_hub):
    for size in PICO_SIZES:
        losses = {}
        for step in pico_schedule(PICO_MAX_STEP)[1:]:
            folder = snapshot_download(
                f"pico/pico-{size}",
                revision=f"step{step}",
                cache_dir=pico_hub,
                local_files_only=True,
            )
            losses[step] = json.loads(Path(folder, "pico_build.json").read_text())[
                "train_loss_last10"
            ]
        assert losses[PICO_MAX_STEP] < losses[1] - 1.0, losses  # ln(512) = 6.24 at init


def test_builds_are_deterministic_and_skip_what_is_published(tmp_path):
    recipe = PicoRecipe(max_step=4, code_bytes=100_000)
    first = build_pico(tmp_path / "a", ("xs",), (0,), recipe)
    again = build_pico(tmp_path / "a", ("xs",), (0,), recipe)
    build_pico(tmp_path / "b", ("xs",), (0,), recipe)
    assert first[0].built and not again[0].built

    def refs(hub):
        folder = repo_cache_folder(hub, "pico/pico-xs") / "refs"
        return {p.name: p.read_text() for p in folder.iterdir()}

    assert refs(tmp_path / "a") == refs(tmp_path / "b")
    assert len(set(refs(tmp_path / "a").values())) == len(pico_schedule(4))  # all distinct


@pytest.mark.parametrize("seed", [1])
def test_seeds_are_separate_repos_with_different_weights(tmp_path, seed):
    recipe = PicoRecipe(max_step=1, code_bytes=100_000)
    build_pico(tmp_path, ("xs",), (0, seed), recipe)
    zero = (repo_cache_folder(tmp_path, "pico/pico-xs") / "refs" / "step1").read_text()
    other = (repo_cache_folder(tmp_path, f"pico/pico-xs-seed{seed}") / "refs" / "step1").read_text()
    assert zero != other
