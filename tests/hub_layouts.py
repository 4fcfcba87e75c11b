"""Checkpoint folders laid out the way public suites serve them, made from a pico snapshot:
sharded safetensors with their index (most suites), single and sharded pickles with theirs
(pythia-12b's ``pytorch_model-0000k-of-00003.bin``), a revision with no weights (pythia #202),
and revisions that repeat another's files whole (#205) or in part (#206: a shared shard).

Each writer takes the source snapshot and a destination folder and returns the destination.
The tensors are the source's, bit for bit, so any layout must give the source's values.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

NON_WEIGHT_FILES = ("config.json", "generation_config.json", "tokenizer.json",
                    "tokenizer_config.json")  # fmt: skip


def _copy_non_weights(source: Path, destination: Path) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    for name in NON_WEIGHT_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, destination / name)
    return destination


def _groups(state: dict[str, torch.Tensor], shards: int) -> list[dict[str, torch.Tensor]]:
    """The tensors split into ``shards`` groups of consecutive names."""
    names = sorted(state)
    size = -(-len(names) // shards)
    return [{n: state[n] for n in names[k * size : (k + 1) * size]} for k in range(shards)]


def _index(groups: list[dict], name_of) -> dict:
    total = sum(t.numel() * t.element_size() for g in groups for t in g.values())
    weight_map = {n: name_of(k) for k, g in enumerate(groups) for n in g}
    return {"metadata": {"total_size": total}, "weight_map": weight_map}


def _shard(source: Path, destination: Path, shards: int, stem: str, suffix: str, save) -> Path:
    """The source's tensors in ``shards`` files named as transformers names them
    (``{stem}-0000k-of-0000n.{suffix}``), written by ``save(tensors, path)``, and their index."""
    _copy_non_weights(source, destination)
    groups = _groups(load_file(source / "model.safetensors"), shards)

    def name_of(k: int) -> str:
        return f"{stem}-{k + 1:05d}-of-{shards:05d}.{suffix}"

    for k, group in enumerate(groups):
        save(group, destination / name_of(k))
    index = _index(groups, name_of)
    (destination / f"{stem}.{suffix}.index.json").write_text(json.dumps(index, indent=2))
    return destination


def sharded_safetensors(source: Path, destination: Path, shards: int = 3) -> Path:
    from safetensors.torch import save_file

    def save(tensors, path):
        save_file(tensors, path, metadata={"format": "pt"})

    return _shard(source, destination, shards, "model", "safetensors", save)


def single_pickle(source: Path, destination: Path) -> Path:
    _copy_non_weights(source, destination)
    torch.save(load_file(source / "model.safetensors"), destination / "pytorch_model.bin")
    return destination


def sharded_pickles(source: Path, destination: Path, shards: int = 3) -> Path:
    return _shard(source, destination, shards, "pytorch_model", "bin", torch.save)


def without_weights(source: Path, destination: Path) -> Path:
    return _copy_non_weights(source, destination)


def mixed_shards(first: Path, rest: Path, destination: Path) -> Path:
    """A sharded folder whose first shard is ``first``'s and the others ``rest``'s (pythia-12b
    #206: a mid-training branch whose first shard is the final checkpoint's)."""
    shutil.copytree(rest, destination)
    shard = sorted(p.name for p in first.iterdir() if "-00001-of-" in p.name)[0]
    shutil.copy(first / shard, destination / shard)
    return destination


def same_weights(source: Path, destination: Path, branch: str) -> Path:
    """The source's files under another commit: a branch that serves another revision's
    weights (pythia #205, #83) has its own commit on the hub, with a README of its own."""
    shutil.copytree(source, destination)
    (destination / "README.md").write_text(f"{branch}\n")
    return destination


def needs_remote_code(source: Path, destination: Path) -> Path:
    """A checkpoint whose config names a model_type transformers does not know, with an
    auto_map to the repo's own modeling file (what remote-code repos publish)."""
    shutil.copytree(source, destination)
    config = json.loads((destination / "config.json").read_text())
    config["model_type"] = "ckptlab_custom_lm"
    config["auto_map"] = {"AutoConfig": "modeling_custom.CustomConfig",
                          "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}  # fmt: skip
    (destination / "config.json").write_text(json.dumps(config))
    (destination / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    return destination
