"""Input sets: fixed token windows, identical for every checkpoint of a tokenizer.

An input set's id is a hash of its token ids, so identical tokens are one input set whatever
it is called, and a changed corpus or tokenizer is a new input set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
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
    source, texts = source_texts(input_set)
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
