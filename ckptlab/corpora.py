"""Built-in offline corpora: text every Python install has, read at run time (never committed).

Each corpus is a list of documents with stable ids. A document belongs to the ``heldout`` split
when the first byte of sha1(doc id) is below 26 (~10%); the pico suite trains only on ``train``
documents, so ``heldout`` input sets measure generalisation.

Owns: ``CORPORA`` and the split of a document (``split_of``). Must not: read anything but the
Python install's own files, or change ``split_of``: pico trained on the ``train`` side, so a new
split would put training text into ``heldout``.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

HELDOUT_THRESHOLD = 26  # of 256: ~10% of documents


def split_of(doc_id: str) -> str:
    return "heldout" if hashlib.sha1(doc_id.encode()).digest()[0] < HELDOUT_THRESHOLD else "train"


def pydoc_topics() -> list[tuple[str, str]]:
    """The Python reference manual's topics (prose with code), ~80 documents, ~0.5 MB."""
    from pydoc_data.topics import topics

    return [(f"pydoc:{key}", text) for key, text in sorted(topics.items())]


def stdlib_code(max_bytes: int = 4_000_000) -> list[tuple[str, str]]:
    """Python standard-library sources (no tests, no site-packages) in path order, up to
    ``max_bytes``; the cap keeps tokenizer and model training fast."""
    root = Path(sysconfig.get_paths()["stdlib"])
    documents, total = [], 0
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if {"site-packages", "test", "tests", "idle_test"} & set(relative.parts):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if total + len(text) > max_bytes:
            break
        documents.append((f"stdlib:{relative.as_posix()}", text))
        total += len(text)
    return documents


CORPORA = {"pydoc_topics": pydoc_topics, "stdlib_code": stdlib_code}


def documents(corpus: str, split: str = "all") -> list[str]:
    """The texts of ``corpus`` in ``split`` ('train', 'heldout' or 'all'), in a stable order."""
    docs = CORPORA[corpus]()
    return [text for doc_id, text in docs if split == "all" or split_of(doc_id) == split]
