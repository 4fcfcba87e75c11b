"""Writes the data of the two lm-eval tasks shipped for the pico suite (run it to regenerate;
a test checks the committed files equal its output).

The pico models train on Python standard-library code and the Python reference manual, so the
tasks ask what such a model can learn over training: which bracket closes an expression, which
punctuation ends a compound statement's header (multiple choice), and the one word an idiom or
an assignment makes certain (cloze). Every item is built here from the templates and word lists
below with a fixed seed; none is copied from the training corpus.

    python -m ckptlab.analyses.lm_eval_tasks.make_pico_tasks

Owns: the tasks' templates, word lists and seed. Must not: copy an item from the training
corpus, or change without regenerating the committed JSONL files (a test holds them equal to its
output).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SEED = 15

NAMES = [
    "value", "items", "count", "result", "index", "name", "path", "data", "buffer", "offset",
    "total", "parts", "line", "text", "key", "node", "entry", "config", "limit", "source",
    "target", "width", "height", "token", "prefix", "suffix", "record", "field", "column", "row",
]  # fmt: skip
CALLS = ["len", "sorted", "list", "str", "int", "repr", "tuple", "max", "min", "sum"]
CLOSERS = {"(": ")", "[": "]", "{": "}"}


def bracket_item(rng: random.Random) -> dict:
    """``x = f(a[b`` → which character comes next: the closer of the innermost open bracket."""
    depth = rng.randint(1, 3)
    text, opened = f"{rng.choice(NAMES)} = ", []
    for _ in range(depth):
        kind = rng.choice("([{")
        if kind == "(":
            text += f"{rng.choice(CALLS)}("
        elif kind == "[":
            text += f"{rng.choice(NAMES)}["
        else:  # a key first: after ``{name`` a ``:`` would be as likely as ``}``
            text += f"{{'{rng.choice(NAMES)}': "
        opened.append(kind)
    text += rng.choice(NAMES)
    choices = [")", "]", "}"]
    return {"family": "bracket", "context": text, "choices": choices,
            "gold": choices.index(CLOSERS[opened[-1]])}  # fmt: skip


def header_item(rng: random.Random) -> dict:
    """A compound statement's header → ``:``; the other choices cannot follow it."""
    a, b = rng.sample(NAMES, 2)
    header = rng.choice(
        [
            f"if {a} > {b}",
            f"for {a} in {b}",
            f"while {a} < {b}",
            f"def get_{a}(self, {b})",
            f"class {a.title()}{b.title()}(object)",
            f"elif {a} is None",
            f"with open({a}) as {b}",
            f"if not {a}",
        ]
    )
    indent = rng.choice(["", "    ", "        "])
    choices = [":", ";", ")", "="]
    return {"family": "header", "context": indent + header, "choices": choices, "gold": 0}


def assignment_item(rng: random.Random) -> dict:
    """``def __init__(self, name): self.name = `` → ``name``: copy the argument."""
    a, b = rng.sample(NAMES, 2)
    context = (
        f"class {a.title()}:\n    def __init__(self, {a}, {b}):\n"
        f"        self.{a} = {a}\n        self.{b} ="
    )
    return {"family": "assignment", "context": context, "target": f" {b}"}


IDIOMS = [  # (context with {a}, target): the word the idiom makes certain
    ("for key, value in {a}.", "items"),
    ("try:\n    import {a}\nexcept", " ImportError"),
    ("if __name__ == '__main__", "'"),
    ("def __init__(", "self"),
    ("raise NotImplemented", "Error"),
    ("{a} = {{}}\nfor key in {a}.", "keys"),
    ("import os\n{a} = os.path.", "join"),
    ("    @property\n    def {a}(", "self"),
    ("    @classmethod\n    def from_{a}(", "cls"),
    ("        return super().__init__(*args, **", "kwargs"),
    ("{a} = []\n{a}.", "append"),
    ("except Exception as", " e"),
    ("if {a} is not", " None"),
    ("    def __eq__(self, ", "other"),
    ("with open({a}) as", " f"),
]


def idiom_item(rng: random.Random, template: str, target: str) -> dict:
    return {"family": "idiom", "context": template.format(a=rng.choice(NAMES)), "target": target}


def build() -> dict[str, list[dict]]:
    rng = random.Random(SEED)
    mc = [bracket_item(rng) for _ in range(48)] + [header_item(rng) for _ in range(32)]
    cloze = [assignment_item(rng) for _ in range(40)]
    for template, target in IDIOMS:  # an idiom with a name slot thrice, with three names
        repeats = 3 if "{a}" in template else 1
        cloze += [idiom_item(rng, template, target) for _ in range(repeats)]
    for split in (mc, cloze):
        for i, doc in enumerate(split):
            doc["id"] = i
    return {"pico_python_mc.jsonl": mc, "pico_python_cloze.jsonl": cloze}


def render(docs: list[dict]) -> str:
    return "".join(json.dumps(doc, sort_keys=True) + "\n" for doc in docs)


def main() -> None:
    for filename, docs in build().items():
        (HERE / filename).write_text(render(docs), encoding="utf-8")
        print(f"{filename}: {len(docs)} documents")


if __name__ == "__main__":
    main()
