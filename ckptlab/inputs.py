"""Input sets: fixed token windows, identical for every checkpoint of a tokenizer.

An input set's id is a hash of its token ids, so identical tokens are one input set whatever
it is called, and a changed corpus or tokenizer is a new input set.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from ckptlab.corpora import documents
from ckptlab.home import hub_cache_dir
from ckptlab.hub_corpus import HubCorpusError, hub_documents
from ckptlab.spec import InputSet


@dataclass(frozen=True)
class MaterializedInputSet:
    name: str
    input_set_id: str
    token_ids: np.ndarray  # [num_sequences, seq_len] int64
    source: str  # e.g. "builtin:pydoc_topics/heldout" or "file:/path"
    seed: int
    tokenizer_of: str  # the model whose tokenizer produced the ids


class InputSetError(ValueError):
    pass


def token_ids_id(token_ids: np.ndarray) -> str:
    digest = hashlib.sha256(str(token_ids.shape).encode())
    digest.update(np.ascontiguousarray(token_ids, dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


def source_texts(input_set: InputSet) -> tuple[str, list[str]]:
    if input_set.builtin is not None:
        return f"builtin:{input_set.builtin}/{input_set.split}", documents(
            input_set.builtin, input_set.split
        )
    if input_set.hub is not None:
        try:
            return hub_documents(input_set.hub, hub_cache_dir())
        except HubCorpusError as err:
            raise InputSetError(f"input_sets.{input_set.name}.hub: {err}") from None
    path = Path(input_set.file)
    try:
        return f"file:{path}", [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError as err:
        raise InputSetError(
            f"input_sets.{input_set.name}.file: {path} is not UTF-8 text (byte "
            f"0x{err.object[err.start]:02x} at offset {err.start})"
        ) from None
    except OSError as err:
        raise InputSetError(
            f"input_sets.{input_set.name}.file: cannot read {path}: {err.strerror}"
        ) from None


def materialize(input_set: InputSet, tokenizer, tokenizer_of: str) -> MaterializedInputSet:
    """Tokenize the corpus (documents joined by EOS), cut it into non-overlapping windows of
    seq_len tokens and draw num_sequences of them with the input set's seed."""
    return _materialize(input_set, *source_texts(input_set), tokenizer, tokenizer_of)


def _materialize(
    input_set: InputSet, source: str, texts: list[str], tokenizer, tokenizer_of: str
) -> MaterializedInputSet:
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        if eos is not None:
            stream.append(eos)
    n_windows = len(stream) // input_set.seq_len
    if n_windows < input_set.num_sequences:
        raise InputSetError(
            f"input_sets.{input_set.name}: {source} has {len(stream)} tokens, "
            f"{n_windows} windows of {input_set.seq_len}; {input_set.num_sequences} requested"
        )
    rng = np.random.default_rng(input_set.seed)
    chosen = np.sort(rng.choice(n_windows, size=input_set.num_sequences, replace=False))
    tokens = np.asarray(stream, dtype=np.int64)
    windows = np.stack(
        [tokens[w * input_set.seq_len : (w + 1) * input_set.seq_len] for w in chosen]
    )
    return MaterializedInputSet(
        name=input_set.name,
        input_set_id=token_ids_id(windows),
        token_ids=windows,
        source=source,
        seed=input_set.seed,
        tokenizer_of=tokenizer_of,
    )


# ------------------------------------------------------------------ windows kept between runs

# Files that never change how text becomes tokens: the weights.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


def _tokenizer_identity(folder: Path) -> list[tuple[str, str]]:
    """(file name, content id) of every non-weight file of a tokenizer's folder, whatever
    AutoTokenizer reads from it (tokenizer.json, its config, vocab and merges, config.json's
    model_type, a custom tokenizer's code). A hub snapshot's files link to blobs named by their
    content hash, read without opening them; other files are hashed."""
    identity = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.endswith(_WEIGHT_SUFFIXES) or ".cache" in path.parts:
            continue
        blob = Path(os.readlink(path)).name if path.is_symlink() else None
        content = blob or hashlib.sha256(path.read_bytes()).hexdigest()
        identity.append((str(path.relative_to(folder)), content))
    return identity


def windows_key(input_set: InputSet, texts: list[str], folder: Path) -> str:
    """What the windows depend on: the input set's definition, the text itself, the tokenizer's
    files and the versions of the libraries that tokenize. The name alone does not count."""
    digest = hashlib.sha256()
    definition = input_set.model_dump(mode="json", exclude={"name"})
    versions = {name: version(name) for name in ("transformers", "tokenizers")}
    digest.update(json.dumps([definition, versions, _tokenizer_identity(folder)]).encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:40]


def materialize_cached(
    input_set: InputSet,
    folder: Path,
    tokenizer_of: str,
    cache_dir: Path,
    trust_remote_code: bool = False,
) -> MaterializedInputSet:
    """``materialize`` with the tokenizer of ``folder``, its windows kept in ``cache_dir``
    under ``windows_key``: planning the same spec again (`ckptlab plan`, a rerun) loads no
    tokenizer, and so never imports transformers (1 s) or the torch it brings (2 s)."""
    source, texts = source_texts(input_set)
    path = cache_dir / f"{windows_key(input_set, texts, folder)}.npy"
    if path.is_file():
        windows = np.load(path, allow_pickle=False)
        return MaterializedInputSet(
            name=input_set.name,
            input_set_id=token_ids_id(windows),
            token_ids=windows,
            source=source,
            seed=input_set.seed,
            tokenizer_of=tokenizer_of,
        )
    from ckptlab.hub import load_tokenizer

    tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code)
    materialized = _materialize(input_set, source, texts, tokenizer, tokenizer_of)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    with open(partial, "wb") as out:  # np.save on a path would append ".npy"
        np.save(out, materialized.token_ids, allow_pickle=False)
    os.replace(partial, path)  # whole or absent, for a concurrent plan
    return materialized
