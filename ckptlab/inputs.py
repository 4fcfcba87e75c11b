"""Input sets: fixed token windows, identical for every checkpoint of a tokenizer.

An input set's id is a hash of its token ids, so identical tokens are one input set whatever
it is called, and a changed corpus or tokenizer is a new input set.

Owns: ``MaterializedInputSet``, cutting an input set into windows (tokenize, cut, seeded draw),
its id, and the windows kept in ``$CKPTLAB_HOME/input-sets``. Must not: load a tokenizer
(transformers, and the torch it brings) when the windows are cached, or change how text becomes
windows without bumping ``WINDOWS_FORMAT``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
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


def source_texts(input_set: InputSet, spec_folder: Path = Path(".")) -> tuple[str, list[str]]:
    """(where the text comes from, its documents); a relative ``file`` lies in ``spec_folder``."""
    if input_set.builtin is not None:
        return f"builtin:{input_set.builtin}/{input_set.split}", documents(
            input_set.builtin, input_set.split
        )
    if input_set.hub is not None:
        try:
            return hub_documents(input_set.hub, hub_cache_dir())
        except HubCorpusError as err:
            raise InputSetError(f"input_sets.{input_set.name}.hub: {err}") from None
    path = spec_folder / input_set.file
    try:
        return f"file:{input_set.file}", [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError as err:
        raise InputSetError(
            f"input_sets.{input_set.name}.file: {path} is not UTF-8 text (byte "
            f"0x{err.object[err.start]:02x} at offset {err.start})"
        ) from None
    except OSError as err:
        raise InputSetError(
            f"input_sets.{input_set.name}.file: cannot read {path}: {err.strerror}"
        ) from None


def materialize(
    input_set: InputSet, tokenizer, tokenizer_of: str, spec_folder: Path = Path(".")
) -> MaterializedInputSet:
    """Tokenize the corpus (documents joined by EOS), cut it into non-overlapping windows of
    seq_len tokens and draw num_sequences of them with the input set's seed. A relative
    ``file`` lies in ``spec_folder``."""
    texts = source_texts(input_set, spec_folder)
    return _materialize(input_set, *texts, tokenizer, tokenizer_of)


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

WINDOWS_FORMAT = 1  # bump when _materialize changes how text becomes windows
# Libraries whose versions can change the ids: the tokenizers, their converters, NumPy's RNG.
TOKENIZING_LIBRARIES = (
    "transformers",
    "tokenizers",
    "sentencepiece",
    "tiktoken",
    "protobuf",
    "numpy",
)
_HUB_BLOB = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def _content_id(path: Path) -> str:
    """A file's content hash: a hub snapshot's link to ``blobs/<hash>`` names it already (read
    without opening the file); anything else is hashed."""
    if path.is_symlink():
        target = Path(os.readlink(path))
        if target.parent.name == "blobs" and _HUB_BLOB.fullmatch(target.name):
            return target.name
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tokenizer_identity(folder: Path) -> list[tuple[str, str]]:
    """(name, content hash) of the files of a checkpoint folder that AutoTokenizer may read:
    its top-level files of the tokenizer patterns (what the plan fetches without weights:
    tokenizer.json, its config, vocab and merges, config.json's model_type)."""
    from ckptlab.hub import TOKENIZER_PATTERNS

    files = [
        path
        for path in folder.iterdir()
        if path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in TOKENIZER_PATTERNS)
    ]
    return [(path.name, _content_id(path)) for path in sorted(files)]


def windows_key(input_set: InputSet, texts: list[str], identity: list[tuple[str, str]]) -> str:
    """What the windows depend on: how ckptlab cuts them, the input set's definition (not its
    name), the tokenizer's files, the tokenizing libraries' versions and the text itself."""
    versions = {}
    for name in TOKENIZING_LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    definition = input_set.model_dump(mode="json", exclude={"name"})
    digest = hashlib.sha256(json.dumps([WINDOWS_FORMAT, definition, versions, identity]).encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:40]


def _read_windows(path: Path, input_set: InputSet) -> np.ndarray | None:
    """The cached windows, or None when absent, unreadable or not of the set's shape."""
    try:
        windows = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if windows.shape != (input_set.num_sequences, input_set.seq_len):
        return None
    return windows.astype(np.int64, copy=False)


def _write_windows(path: Path, windows: np.ndarray) -> None:
    """Best effort (a read-only or full home only costs the next plan a tokenizer): written
    beside its place, then moved there, so a concurrent plan reads it whole or not at all."""
    partial = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".partial", delete=False) as out:
            partial = out.name
            np.save(out, windows, allow_pickle=False)
        os.replace(partial, path)
    except OSError:
        if partial is not None:
            with contextlib.suppress(OSError):
                os.unlink(partial)


def materialize_all(
    input_sets: list[InputSet],
    folder: Path,
    tokenizer_of: str,
    cache_dir: Path,
    spec_folder: Path = Path("."),
    trust_remote_code: bool = False,
    before_tokenizing: Callable[[], None] | None = None,
) -> dict[str, MaterializedInputSet]:
    """``materialize`` for each input set with the tokenizer of ``folder``, the windows kept in
    ``cache_dir`` under ``windows_key``: planning the same spec again (`ckptlab plan`, a rerun)
    loads no tokenizer, and so imports neither transformers (1 s) nor the torch it brings
    (2 s). A tokenizer of remote code is never cached: its code may live in another repo.
    ``before_tokenizing`` is called when a tokenizer is about to load (seconds of work).
    A relative ``file`` input set lies in ``spec_folder``."""
    from ckptlab.hub import load_tokenizer

    identity = None if trust_remote_code else tokenizer_identity(folder)
    tokenizer = None
    materialized = {}
    for input_set in input_sets:
        source, texts = source_texts(input_set, spec_folder)
        path = None
        if identity is not None:
            path = cache_dir / f"{windows_key(input_set, texts, identity)}.npy"
            windows = _read_windows(path, input_set)
            if windows is not None:
                materialized[input_set.name] = MaterializedInputSet(
                    name=input_set.name,
                    input_set_id=token_ids_id(windows),
                    token_ids=windows,
                    source=source,
                    seed=input_set.seed,
                    tokenizer_of=tokenizer_of,
                )
                continue
        if tokenizer is None:  # once per model, and only for what the cache does not hold
            if before_tokenizing is not None:
                before_tokenizing()
            tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code)
        made = _materialize(input_set, source, texts, tokenizer, tokenizer_of)
        if path is not None:
            _write_windows(path, made.token_ids)
        materialized[input_set.name] = made
    return materialized
