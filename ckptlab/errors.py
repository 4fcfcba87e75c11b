"""One line of text for an error: what failure rows, report notes and CLI messages show.

Owns: turning an exception (or a message) into a single readable line. Must not: import
anything beyond the standard library, since the light CLI commands use it.
"""

from __future__ import annotations

import traceback
from pathlib import Path

# What Ray appends to a task's error after the message: the worker's traceback and advice.
_TAILS = (" Traceback (most recent call last)", " Some common causes include")


def one_line(
    err: BaseException | str | None, limit: int = 400, *, first: bool = False, where: bool = False
) -> str:
    """``Type: message`` of an exception (or the text itself) on one line, at most ``limit``
    characters: runs of whitespace become one space and Ray's appended traceback is cut.

    ``first`` keeps only the first non-empty line (for messages whose later lines are logs or a
    traceback); ``where`` adds the ``file:line`` that raised, for failures read far from the
    code that raised them.
    """
    if err is None:
        return ""
    text = str(err)
    if first:  # of the message: a type name alone is no line
        text = next((line for line in text.splitlines() if line.strip()), "")
    if not isinstance(err, str):
        text = f"{type(err).__name__}: {text}"
    text = " ".join(text.split())
    for tail in _TAILS:
        text = text.split(tail)[0]
    if where and isinstance(err, BaseException) and err.__traceback__ is not None:
        last = traceback.extract_tb(err.__traceback__)[-1]
        text += f" ({Path(last.filename).name}:{last.lineno})"
    return text if len(text) <= limit else text[: limit - 3] + "..."
