"""Content keys: a cell is named by a hash of exactly what it is, so a rerun finds what is
stored and a change of any part (a parameter, the analysis' version, the dtype) is a new cell.
Both the plan (which keys the cells to compute) and the results database (which re-keys cells
stored under an older formula) use this one function.

Owns: ``cell_identity`` and the canonical JSON and hash it is made of. Must not: import beyond
the standard library, or change what an existing key holds: a changed identity recomputes every
stored cell (hence the default dtype stays out of it).
"""

from __future__ import annotations

import hashlib
import json

DEFAULT_DTYPE = "float32"


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def cell_identity(
    commit: str,
    analysis: str,
    version: int,
    params_json: str,
    input_set_id: str | None,
    source_hash: str | None = None,
    dtype: str = DEFAULT_DTYPE,
) -> str:
    """The key of one analysis (name, version, params; a plug-in's source hash) on one commit,
    one input set and one dtype."""
    identity = [commit, analysis, version, params_json, input_set_id]
    if source_hash:  # a plug-in: its code is part of what a cell is
        identity.append(source_hash)
    # The dtype joins the identity only when it is not the default, so float32 cells keep the
    # keys they were stored under before dtype was part of it (a rerun does not recompute them).
    if dtype != DEFAULT_DTYPE:
        identity.append(dtype)
    return sha256_hex(canonical_json(identity))
