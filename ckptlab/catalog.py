"""Checkpointed model suites: which hub repos a (suite, size, seed) names, which checkpoints
exist, and how each suite's revision names parse into (step, tokens seen, stage, seed).

Tokens seen is the one axis every suite shares, so curves of different suites (and of the
stages of one suite) line up: a checkpoint's ``tokens`` is the number of training tokens
before it, counted from the start of training (not of its stage), and a suite's checkpoints
are ordered by it (``Checkpoint.order``). Where a suite's steps restart in a later stage
(OLMo 2's stage 2, CrystalCoder's phases), ``step`` is the step the revision names, within its
stage, and ``tokens`` adds the tokens of the stages before it.

Every number below comes with its source (a model card, a training config, a README); the
ones that could not be confirmed are None and say so ('unconfirmed'), and a suite without
tokens per step records no tokens seen (token selectors refuse it) rather than a guess.

Owns: ``SUITES`` (each suite's repos, sizes, seeds, schedule, revision names and tokens per
step, with their sources) and the training order of checkpoints. Must not: reach the hub (the
repos of a listed suite are listed by ``orchestrator/checkpoints.py``) or import beyond the standard
library: ``ckptlab suites`` and ``validate`` read it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

# ------------------------------------------------------------------------------ token counts

TOKEN_UNITS = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_TOKEN_COUNT = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)")


def parse_token_count(value: int | str) -> int:
    """A token count: an integer, or a number with a K/M/B/T suffix (``10B``, ``2.5T``; case
    ignored). Raises ValueError with a one-line message naming what is wrong."""
    if isinstance(value, bool):
        raise ValueError("expected a token count such as 10B (got a boolean)")
    if isinstance(value, int):
        count = value
    elif isinstance(value, str):
        match = _TOKEN_COUNT.fullmatch(value.strip())
        if match is None:
            raise ValueError("expected a token count such as 10B, 500M or 2.5T")
        number, suffix = match.groups()
        unit = TOKEN_UNITS.get(suffix.upper()) if suffix else 1
        if unit is None:
            raise ValueError(f"unknown suffix {suffix!r} (use K, M, B or T)")
        try:
            exact = Decimal(number) * unit
        except InvalidOperation:  # pragma: no cover - the regex admits decimals only
            raise ValueError("expected a token count such as 10B") from None
        if exact != exact.to_integral_value():
            raise ValueError(f"{value!r} is not a whole number of tokens")
        count = int(exact)
    else:
        raise ValueError("expected a token count such as 10B, 500M or 2.5T")
    if count <= 0:
        raise ValueError("a token count is positive")
    return count


def format_tokens(count: int | None) -> str:
    """A token count as written: ``3896000000000`` -> ``3896B``, ``2097152`` -> ``2,097,152``
    (a suffix only where it is exact); None -> ``?`` (unconfirmed)."""
    if count is None:
        return "?"
    for suffix, unit in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= unit and count % unit == 0:
            return f"{count // unit}{suffix}"
    return f"{count:,}"


# ------------------------------------------------------------------------------ checkpoints


def stage_rank(stage: str | None) -> int:
    """'stage2' -> 2, 'phase3' -> 3; no stage -> 1 (single-stage training is stage 1)."""
    if stage is None:
        return 1
    digits = re.search(r"([0-9]+)$", stage)
    return int(digits.group(1)) if digits else 1


def training_order(
    tokens: int | None, stage: str | None, step: int, seed: int | None, revision: str
) -> tuple:
    """Where a checkpoint lies on the training axis, as a sort key: tokens seen; without
    tokens, the stage, then the step (steps restart in a later stage of some suites, so the
    step alone is not an order). Known tokens sort before unknown ones; ties (OLMo 2's
    ingredients) by seed, then revision name."""
    known = tokens is not None
    return (not known, tokens if known else 0, stage_rank(stage), step, seed or 0, revision)


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint as its revision name says: the step (within its stage), the tokens seen
    since the start of training (None where the suite's tokens per step is unconfirmed), the
    stage ('stage2', 'phase1'; None for single-stage suites) and the seed (a run variant inside
    one repo, e.g. OLMo 2's stage-2 ingredient k; None otherwise)."""

    revision: str
    step: int
    tokens: int | None = None
    stage: str | None = None
    seed: int | None = None
    repo: str | None = None  # suites with one repo per checkpoint (TinyLlama); else None

    @property
    def order(self) -> tuple:
        return training_order(self.tokens, self.stage, self.step, self.seed, self.revision)


# ------------------------------------------------------------------------------ schedules


def pythia_schedule() -> list[int]:
    """Pythia's 154 checkpoints: 0, 1, 2, 4, ..., 512, then every 1000 up to 143000."""
    return [0] + [2**i for i in range(10)] + list(range(1000, 143_001, 1000))


def pythia_v0_schedule() -> list[int]:
    """The v0 Pythia models' 143 checkpoints: every 1000 from 1000 to 143000 (v0 has no step0
    and no log-spaced early checkpoints; TransformerLens's PYTHIA_V0_CHECKPOINTS agrees)."""
    return list(range(1000, 143_001, 1000))


def pico_schedule(max_step: int = 1000) -> list[int]:
    """The pico suite's checkpoints, Pythia-like: 0, 1, 2, 4, ..., 64, then every 100."""
    steps = [0] + [2**i for i in range(7)] + list(range(100, max_step + 1, 100))
    return [s for s in steps if s <= max_step]


def crfm_schedule() -> list[int]:
    """The Stanford CRFM (Mistral) GPT-2 runs' checkpoints: every 10 steps to 100, every 50 to
    2000, every 100 to 20000, every 1000 to 400000 (``checkpoint_frequency`` in
    stanford-crfm/mistral conf/gpt2-mistral-small-config.yaml; TransformerLens's
    STANFORD_CRFM_CHECKPOINTS lists the same, with step 0). The hub repos are listed anyway:
    this is what ``ckptlab suites`` counts."""
    return (
        list(range(0, 100, 10))
        + list(range(100, 2000, 50))
        + list(range(2000, 20000, 100))
        + list(range(20000, 400_001, 1000))
    )


# ------------------------------------------------------------------------------ tokens/step

PYTHIA_TOKENS_PER_STEP = 1024 * 2048  # 2,097,152: batch 1024 x 2048 (Pythia README)
# pico: PicoRecipe's defaults, batch_size 16 x seq_len 128 (what ckptlab.pico.build logs as
# tokens_seen); a pico build with another recipe has other token counts.
PICO_TOKENS_PER_STEP = 16 * 128
# Pythia v0: sizes 160m, 410m and 1.4b trained with a 4M-token batch for 71500 steps,
# checkpointed every 500 steps, and their hub checkpoints are renamed "for consistency with all
# 2M batch models": step1000 is optimizer step 500 (EleutherAI/pythia README, footnote on
# pythia-{size}-v0). So tokens seen = the *named* step x 2,097,152 for every v0 size, and the
# optimizer step is the named step / 2 for these sizes. Edit this rule here if a source says
# otherwise; nothing else depends on which sizes these are.
PYTHIA_V0_STEP_LABEL_SCALE: Mapping[str, int] = {"160m": 2, "410m": 2, "1.4b": 2}
CRFM_TOKENS_PER_STEP = 512 * 1024  # effective_bsz 512 x seq_len 1024 (mistral conf/)
TINYLLAMA_TOKENS_PER_STEP = 2048 * 1024  # "Batch Size: 2 million tokens (2048 * 1024)"


# ------------------------------------------------------------------------------ suites


@dataclass(frozen=True)
class Suite:
    """A catalogued family of checkpointed runs.

    ``schedule`` lists the steps of suites whose checkpoints are known in advance (Pythia,
    pico); for the others (``schedule`` None) the checkpoints of a repo are its branches,
    listed from the hub (or the local hub cache offline) and parsed with ``revision_pattern``
    (a full match; named groups ``step``, optionally ``stage``, ``seed``, ``tokens`` +
    ``unit``). Names that do not match (``main``, odd branches) are not checkpoints."""

    name: str
    title: str
    sizes: tuple[str, ...]
    repo_template: str  # formatted with size, dedup suffix, seed suffix
    schedule: tuple[int, ...] | None = None
    revision_format: str | None = "step{step}"  # a step's revision name; None: not formable
    revision_pattern: str = r"step(?P<step>[0-9]+)"
    convention: str = "step{N}"  # shown by `ckptlab suites`
    count: str = ""  # how many checkpoints, in words, when not a known schedule
    repos: Mapping[str, str] = field(default_factory=dict)  # size or size/seed -> repo
    tokens_per_step: int | None = None
    tokens_per_step_by_size: Mapping[str, int | None] = field(default_factory=dict)
    # Whether a later stage's names count steps and tokens from its own start (OLMo 2,
    # CrystalCoder) rather than from the start of training (SmolLM3).
    stages_restart: bool = False
    # Tokens seen before stage 2 starts, per size (restarting stages); absent: unknown.
    stage1_tokens: Mapping[str, int] = field(default_factory=dict)
    default_stage: str | None = None  # the stage of a name without a stage prefix
    seeded_sizes: tuple[str, ...] = ()  # sizes that have seed variants (seed 0 = the original)
    max_seed: int = 0
    seed_values: tuple[int, ...] | None = None  # the valid seeds, when not 0..max_seed
    has_deduped: bool = False
    step_label_scale: Mapping[str, int] = field(default_factory=dict)  # named / optimizer step
    checkpoint_repos: tuple[str, ...] = ()  # one repo per checkpoint (TinyLlama)
    repo_pattern: str | None = None  # parses checkpoint_repos (groups as revision_pattern)
    local_only: bool = False  # never ask the network (pico lives only in the local cache)
    source: str = ""
    notes: str = ""

    # ---------------------------------------------------------------- repos and seeds

    def repo_id(self, size: str, seed: int = 0, deduped: bool = False) -> str:
        for key in (f"{size}/{seed}", size):
            if key in self.repos:
                return self.repos[key]
        dedup = "-deduped" if deduped else ""
        seed_suffix = f"-seed{seed}" if seed else ""
        return self.repo_template.format(size=size, dedup=dedup, seed=seed_suffix)

    def seeds_for(self, size: str) -> tuple[int, ...]:
        if self.seed_values is not None:
            return self.seed_values
        return tuple(range(self.max_seed + 1)) if size in self.seeded_sizes else (0,)

    # ---------------------------------------------------------------- revisions

    @property
    def listed(self) -> bool:
        """True when a repo's checkpoints come from listing its revisions."""
        return self.schedule is None and not self.checkpoint_repos

    def revision(self, step: int) -> str:
        if self.revision_format is None:
            raise ValueError(f"suite {self.name} names revisions by more than the step")
        return self.revision_format.format(step=step)

    def step_tokens(self, size: str | None) -> int | None:
        """Tokens per step of one size (None: unconfirmed, or named in the revisions)."""
        if size is not None and size in self.tokens_per_step_by_size:
            return self.tokens_per_step_by_size[size]
        return self.tokens_per_step

    def records_tokens(self, size: str | None = None) -> bool:
        """Whether this size's checkpoints have tokens seen (named, or steps x tokens)."""
        named = "(?P<tokens>" in self.revision_pattern or "(?P<tokens>" in (self.repo_pattern or "")
        return named or self.step_tokens(size) is not None

    def optimizer_step(self, size: str, step: int) -> int:
        """The optimizer step of a named step (they differ for Pythia v0's 4M-batch sizes)."""
        return step // self.step_label_scale.get(size, 1)

    def parse(
        self, revision: str, size: str | None = None, *, tokens_per_step: int | None = None
    ) -> Checkpoint | None:
        """The checkpoint a revision name describes, or None when it is not one (``main``).
        ``tokens_per_step`` overrides the catalog's (a spec's ``tokens_per_step``)."""
        match = re.fullmatch(self.revision_pattern, revision)
        if match is None:
            return None
        return self._checkpoint(match, revision, size, tokens_per_step)

    def parse_repo(self, repo: str, *, tokens_per_step: int | None = None) -> Checkpoint | None:
        """For one-repo-per-checkpoint suites: the checkpoint a repo id names (its ``main``)."""
        if self.repo_pattern is None:
            return None
        match = re.fullmatch(self.repo_pattern, repo)
        if match is None:
            return None
        found = self._checkpoint(match, "main", None, tokens_per_step)
        return Checkpoint(found.revision, found.step, found.tokens, found.stage, found.seed, repo)

    def _checkpoint(
        self, match: re.Match, revision: str, size: str | None, tokens_per_step: int | None
    ) -> Checkpoint:
        groups = match.groupdict()
        if groups.get("stepk") is not None:
            step = int(groups["stepk"]) * 1000  # TinyLlama names steps in thousands
        else:
            step = int(groups["step"])
        stage = groups.get("stage")
        stage = f"{groups.get('stage_word') or 'stage'}{stage}" if stage else self.default_stage
        seed = int(groups["seed"]) if groups.get("seed") else None
        per_step = tokens_per_step or self.step_tokens(size)
        if groups.get("tokens") is not None:
            unit = TOKEN_UNITS[(groups.get("unit") or "B").upper()]
            tokens = int(Decimal(groups["tokens"]) * unit)
        elif per_step is not None:
            tokens = step * per_step
        else:
            tokens = None
        if tokens is not None and self.stages_restart and stage_rank(stage) > 1:
            # The names count a later stage's steps and tokens from its own start.
            offset = self.stage1_tokens.get(size) if stage_rank(stage) == 2 else None
            tokens = None if offset is None else offset + tokens
        return Checkpoint(revision, step, tokens, stage, seed)

    def checkpoints(
        self, size: str, seed: int = 0, *, tokens_per_step: int | None = None
    ) -> list[Checkpoint] | None:
        """The checkpoints known without listing a repo (in axis order), or None for suites
        whose repos are listed."""
        if self.schedule is not None:
            per_step = tokens_per_step or self.step_tokens(size)
            found = [
                Checkpoint(self.revision(step), step, None if per_step is None else step * per_step)
                for step in self.schedule
            ]
        elif self.checkpoint_repos:
            found = [
                self.parse_repo(repo, tokens_per_step=tokens_per_step)
                for repo in self.checkpoint_repos
            ]
        else:
            return None
        return sorted((c for c in found if c is not None), key=lambda c: c.order)

    def from_revisions(
        self, names, size: str, *, tokens_per_step: int | None = None
    ) -> list[Checkpoint]:
        """The checkpoints among a repo's revision names, in axis order."""
        found = (self.parse(n, size, tokens_per_step=tokens_per_step) for n in names)
        return sorted((c for c in found if c is not None), key=lambda c: c.order)

    def checkpoint_count(self) -> str:
        if self.schedule is not None:
            return str(len(self.schedule))
        if self.checkpoint_repos:
            return f"{len(self.checkpoint_repos)} repos"
        return self.count or "listed"

    def tokens_per_step_text(self) -> str:
        if "(?P<tokens>" in self.revision_pattern:
            return "in the name"
        values = {self.step_tokens(s) for s in self.sizes}
        if len(values) == 1:
            return format_tokens(values.pop())
        return ", ".join(f"{s}: {format_tokens(self.step_tokens(s))}" for s in self.sizes)


_OLMO_PATTERN = (
    r"(?:stage(?P<stage>[0-9]+)-)?(?:ingredient(?P<seed>[0-9]+)-)?"
    r"step(?P<step>[0-9]+)-tokens(?P<tokens>[0-9]+)(?P<unit>B)"
)
_SMOL_PATTERN = r"(?:stage(?P<stage>[0-9]+)-)?step-(?P<step>[0-9]+)"

SUITES: dict[str, Suite] = {
    "pythia": Suite(
        name="pythia",
        title="Pythia (EleutherAI), deduped, PolyPythias",
        sizes=("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"),
        schedule=tuple(pythia_schedule()),
        repo_template="EleutherAI/pythia-{size}{dedup}{seed}",
        # PolyPythias: EleutherAI/pythia-{14m..410m}-seed{1..9}
        seeded_sizes=("14m", "31m", "70m", "160m", "410m"),
        max_seed=9,
        has_deduped=True,
        tokens_per_step=PYTHIA_TOKENS_PER_STEP,
        source="https://github.com/EleutherAI/pythia (README: 143 checkpoints every "
        "2,097,152,000 tokens; batch 1024 x 2048); PolyPythias: EleutherAI/pythia-410m-seed8 "
        "and neox-ckpt-pythia-*-seed* cards (154 branches step0 ... step143000)",
    ),
    "pythia-v0": Suite(
        name="pythia-v0",
        title="Pythia v0 (the models before the January 2023 retraining)",
        sizes=("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"),
        schedule=tuple(pythia_v0_schedule()),
        repo_template="EleutherAI/pythia-{size}{dedup}-v0",
        has_deduped=True,
        tokens_per_step=PYTHIA_TOKENS_PER_STEP,
        step_label_scale=PYTHIA_V0_STEP_LABEL_SCALE,
        source="https://github.com/EleutherAI/pythia (README footnote on pythia-{size}-v0); "
        "TransformerLens PYTHIA_V0_CHECKPOINTS",
        notes="160m, 410m, 1.4b: 4M-token batches, step labels doubled (step1000 = optimizer "
        "step 500); tokens seen = named step x 2,097,152 for every size",
    ),
    "pico": Suite(
        name="pico",
        title="pico (tiny GPT-NeoX models built here: ckptlab pico build)",
        sizes=("xs", "s", "m"),
        schedule=tuple(pico_schedule()),
        repo_template="pico/pico-{size}{dedup}{seed}",
        seeded_sizes=("xs", "s", "m"),
        max_seed=9,
        tokens_per_step=PICO_TOKENS_PER_STEP,
        local_only=True,
        source="ckptlab/pico/build.py (PicoRecipe: batch 16 x 128 tokens)",
    ),
    "olmo": Suite(
        name="olmo",
        title="OLMo 1 and 1.7 (AI2), Transformers-format repos",
        sizes=("1b", "7b", "7b-twin-2t", "1.7-7b", "1b-0724", "7b-0724"),
        repo_template="allenai/OLMo-{size}-hf",
        repos={
            "1b": "allenai/OLMo-1B-hf",
            "7b": "allenai/OLMo-7B-hf",
            "7b-twin-2t": "allenai/OLMo-7B-Twin-2T-hf",
            "1.7-7b": "allenai/OLMo-1.7-7B-hf",
            "1b-0724": "allenai/OLMo-1B-0724-hf",
            "7b-0724": "allenai/OLMo-7B-0724-hf",
        },
        revision_format=None,
        revision_pattern=_OLMO_PATTERN,
        convention="step{N}-tokens{T}B",
        count="listed (every 1000 steps, some 500)",
        source="allenai/OLMo-7B, OLMo-1B and OLMo-1.7-7B-hf model cards ('The naming "
        "convention is step1000-tokens4B', revisions.txt); TransformerLens OLMO_CHECKPOINTS",
        notes="tokens seen = the name's tokens, a whole number of billions rounded by AI2 "
        "(rounding differs between repos: +-1B)",
    ),
    "olmo2": Suite(
        name="olmo2",
        title="OLMo 2 (AI2): stage 1, stage-2 ingredients",
        sizes=("1b", "7b", "13b", "32b"),
        repo_template="allenai/OLMo-2-{size}",
        repos={
            "1b": "allenai/OLMo-2-0425-1B",
            "7b": "allenai/OLMo-2-1124-7B",
            "13b": "allenai/OLMo-2-1124-13B",
            "32b": "allenai/OLMo-2-0325-32B",
        },
        revision_format=None,
        revision_pattern=_OLMO_PATTERN,
        convention="[stageK-][ingredientK-]step{N}-tokens{T}B",
        count="listed (stage 1 every ~1000 steps; stage 2 per ingredient)",
        stages_restart=True,
        default_stage="stage1",
        # The last stage-1 checkpoint's tokens, which stage 2 starts from (the names of stage
        # 2 count from 0 again): allenai/OLMo README ("stage1-step928646-tokens3896B",
        # "stage1-step596057-tokens5001B", "stage1-step721901-tokens6056B"); for 1B, the
        # branch stage1-step1907359-tokens4001B, the latest stage-1 name public code lists
        # (that it is the last one is unconfirmed).
        stage1_tokens={
            "1b": 4001 * 10**9,
            "7b": 3896 * 10**9,
            "13b": 5001 * 10**9,
            "32b": 6056 * 10**9,
        },
        source="https://github.com/allenai/OLMo README (stage 1 / stage 2 tables); "
        "allenai/OLMo issues #816 and #883 (stage-2 branch names)",
        notes="stage-2 ingredient k is a separate run (its own data order) and is the "
        "checkpoint's seed; stage-2 tokens seen = stage-1 tokens + the name's tokens; a name "
        "without a stage prefix is stage 1",
    ),
    "smollm2": Suite(
        name="smollm2",
        title="SmolLM2 intermediate checkpoints (Hugging Face TB)",
        sizes=("135m", "360m", "1.7b"),
        repo_template="HuggingFaceTB/SmolLM2-{size}-intermediate-checkpoints",
        repos={
            "135m": "HuggingFaceTB/SmolLM2-135M-intermediate-checkpoints",
            "360m": "HuggingFaceTB/SmolLM2-360M-intermediate-checkpoints",
            "1.7b": "HuggingFaceTB/SmolLM2-1.7B-intermediate-checkpoints",
        },
        revision_format="step-{step}",
        revision_pattern=_SMOL_PATTERN,
        convention="step-{N} (stageK-step-{N})",
        count="listed (every 240k / 160k / 125k steps, ~250B tokens)",
        tokens_per_step_by_size={
            "135m": 1_048_576,  # "The GBS ... of SmolLM2-135M is 1 048 576" (model card)
            # 360M: the card gives no GBS, only "every 160000 steps ... ~250B tokens" (about
            # 1.56M per step): unconfirmed, so no tokens seen (a spec may set tokens_per_step).
            "360m": None,
            "1.7b": 2_097_152,  # "The GBS ... of SmolLM2-1.7B is 2 097 152" (model card)
        },
        source="HuggingFaceTB/SmolLM2-{135M,360M,1.7B}-intermediate-checkpoints model cards",
        notes="steps count from the start of training in every stage",
    ),
    "smollm3": Suite(
        name="smollm3",
        title="SmolLM3 pre-training checkpoints (Hugging Face TB)",
        sizes=("3b",),
        repo_template="HuggingFaceTB/SmolLM3-3B-checkpoints",
        revision_format=None,
        revision_pattern=_SMOL_PATTERN,
        convention="stage{K}-step-{N}",
        count="listed (every 40000 steps: 86 + 19 + 13)",
        tokens_per_step=2_359_296,  # "The GBS ... for SmolLM3-3B is 2,359,296" (model card)
        source="HuggingFaceTB/SmolLM3-3B-checkpoints model card (stages 1-3 by global step; "
        "the long-context and post-training branch names are unconfirmed and not parsed)",
        notes="steps count from the start of training in every stage",
    ),
    "stanford-gpt2": Suite(
        name="stanford-gpt2",
        title="Stanford CRFM Mistral GPT-2 runs (5 seeds per size)",
        sizes=("small", "medium"),
        repo_template="stanford-crfm/{size}",
        repos={
            "small/21": "stanford-crfm/alias-gpt2-small-x21",
            "small/49": "stanford-crfm/battlestar-gpt2-small-x49",
            "small/81": "stanford-crfm/caprica-gpt2-small-x81",
            "small/343": "stanford-crfm/darkmatter-gpt2-small-x343",
            "small/777": "stanford-crfm/expanse-gpt2-small-x777",
            "medium/21": "stanford-crfm/arwen-gpt2-medium-x21",
            "medium/49": "stanford-crfm/beren-gpt2-medium-x49",
            "medium/81": "stanford-crfm/celebrimbor-gpt2-medium-x81",
            "medium/343": "stanford-crfm/durin-gpt2-medium-x343",
            "medium/777": "stanford-crfm/eowyn-gpt2-medium-x777",
        },
        seeded_sizes=("small", "medium"),
        seed_values=(21, 49, 81, 343, 777),
        revision_format="checkpoint-{step}",
        revision_pattern=r"checkpoint-(?P<step>[0-9]+)",
        convention="checkpoint-{N}",
        count=f"listed ({len(crfm_schedule())} in the training config)",
        tokens_per_step=CRFM_TOKENS_PER_STEP,
        source="https://github.com/stanford-crfm/mistral conf/ (effective_bsz 512, seq_len "
        "1024, checkpoint_frequency, max_steps 400000); hub branch names checkpoint-N",
        notes="seeds are the run seeds 21, 49, 81, 343, 777 (no seed 0)",
    ),
    "amber": Suite(
        name="amber",
        title="LLM360 Amber 7B",
        sizes=("7b",),
        repo_template="LLM360/Amber",
        revision_format="ckpt_{step:03d}",
        revision_pattern=r"ckpt_(?P<step>[0-9]+)",
        convention="ckpt_{NNN} (checkpoint index)",
        count="listed (360: ckpt_000 ... ckpt_359)",
        source="LLM360/Amber model card ('pass a revision with a value between ckpt_000 and "
        "ckpt_358 ... ckpt_359, the final checkpoint')",
        notes="step = the checkpoint index, not an optimizer step; tokens per checkpoint "
        "unconfirmed (1.26T tokens over 360 checkpoints)",
    ),
    "crystalcoder": Suite(
        name="crystalcoder",
        title="LLM360 CrystalCoder 7B (3 phases)",
        sizes=("7b",),
        repo_template="LLM360/CrystalCoder",
        revision_format=None,
        revision_pattern=(
            r"CrystalCoder_(?P<stage_word>phase)(?P<stage>[0-9]+)_checkpoint_(?P<step>[0-9]+)"
        ),
        convention="CrystalCoder_phase{K}_checkpoint_{N}",
        count="listed (3 phases; steps restart per phase)",
        stages_restart=True,
        source="LLM360/CrystalCoder model card (CrystalCoder_phase1_checkpoint_055500, "
        "final CrystalCoder_phase3_checkpoint_027728)",
        notes="tokens per step per phase unconfirmed (the card's table is an image): no "
        "tokens seen; order = phase, then step",
    ),
    "tinyllama": Suite(
        name="tinyllama",
        title="TinyLlama 1.1B intermediate checkpoints (one repo each)",
        sizes=("1.1b",),
        repo_template="TinyLlama/TinyLlama-{size}",
        checkpoint_repos=(
            "TinyLlama/TinyLlama-1.1B-step-50K-105b",
            "TinyLlama/TinyLlama-1.1B-intermediate-step-240k-503b",
            "TinyLlama/TinyLlama-1.1B-intermediate-step-480k-1T",
            "TinyLlama/TinyLlama-1.1B-intermediate-step-715k-1.5T",
            "TinyLlama/TinyLlama-1.1B-intermediate-step-955k-token-2T",
            "TinyLlama/TinyLlama-1.1B-intermediate-step-1195k-token-2.5T",
            "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
        ),
        repo_pattern=(
            r"TinyLlama/TinyLlama-1\.1B-(?:intermediate-)?step-(?P<stepk>[0-9]+)[kK]-"
            r"(?:token-)?[0-9.]+[bBT]"
        ),
        revision_format=None,
        convention="a repo each: ...-step-{N}k-{T}, main",
        tokens_per_step=TINYLLAMA_TOKENS_PER_STEP,
        source="TinyLlama model cards (release schedule; 'Batch Size: 2 million tokens "
        "(2048 * 1024)'; 3T tokens = 1430k steps)",
        notes="the names round steps to thousands: tokens seen = N x 1000 x 2,097,152",
    ),
}
