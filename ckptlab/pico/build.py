"""Train the pico suite: tiny GPT-NeoX models (Pythia's architecture) on offline Python text,
checkpointed on a Pythia-like schedule and published as ``step<N>`` revisions of
``pico/pico-<size>`` into a local Hugging Face hub cache.

Everything is seeded: the same machine, versions and arguments give the same weights and so
the same commit ids.

Owns: ``PICO_SIZES``, the training recipe and its seeds, and ``BUILD_VERSION``. Must not:
publish anywhere but the hub cache it is given, or change the training data or recipe without
bumping ``BUILD_VERSION``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

from ckptlab.analyses.icl_tasks.tasks import DEFAULT_TEMPLATE
from ckptlab.catalog import SUITES, pico_schedule
from ckptlab.corpora import documents, split_of, stdlib_code
from ckptlab.pico.icl_mixture import icl_sequences, task_family_sequences
from ckptlab.pico.publish import publish_revision, published_revisions

EOS = "<|endoftext|>"
VOCAB_SIZE = 512
BUILD_VERSION = 2  # bump when training data or recipe change (2: ICL sequences in the mixture)


@dataclass(frozen=True)
class PicoSize:
    hidden: int
    layers: int
    heads: int


PICO_SIZES = {
    "xs": PicoSize(hidden=32, layers=2, heads=2),
    "s": PicoSize(hidden=64, layers=2, heads=4),
    "m": PicoSize(hidden=128, layers=4, heads=4),
}
assert set(PICO_SIZES) == set(SUITES["pico"].sizes)


@dataclass(frozen=True)
class PicoRecipe:
    max_step: int = 1000
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 20
    code_bytes: int = 2_000_000  # stdlib sources in the mixture (all of pydoc topics goes in)
    # Rows of each batch that are structured sequences (``icl_mixture``), the rest is text:
    # lines under a fresh random mapping, and the category task under one of a fixed family
    # of labelings (what gives the checkpoints in-context learning to find).
    icl_rows: int = 2
    family_rows: int = 8
    icl_template: str = DEFAULT_TEMPLATE


@dataclass
class BuildReport:
    repo: str
    built: bool  # False: every revision was already published
    seconds: float = 0.0
    params: int = 0
    loss_by_step: dict[int, float] = field(default_factory=dict)


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-NeoX's kind) with VOCAB_SIZE entries, EOS as the only special."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS
    )


def training_texts(recipe: PicoRecipe) -> list[str]:
    prose = documents("pydoc_topics", "train")
    code = [t for i, t in stdlib_code(recipe.code_bytes) if split_of(i) == "train"]
    return prose + code


def token_stream(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> np.ndarray:
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for encoded in tokenizer(texts)["input_ids"]:
        ids.extend(encoded)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def model_config(size: PicoSize, recipe: PicoRecipe) -> GPTNeoXConfig:
    return GPTNeoXConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        intermediate_size=4 * size.hidden,
        max_position_embeddings=recipe.seq_len,
        # Rotary on every head dimension: Pythia's 25% is of 64-256-dim heads; of pico's 16-dim
        # heads it would leave 4. The ICL mixture was tuned with this setting.
        rotary_pct=1.0,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )


def _lr_at(step: int, recipe: PicoRecipe) -> float:
    """Linear warmup then cosine decay to 10% (Pythia's schedule shape)."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.max_step - recipe.warmup)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_one(
    repo: str,
    size: PicoSize,
    seed: int,
    recipe: PicoRecipe,
    tokenizer: PreTrainedTokenizerFast,
    stream: np.ndarray,
    hub_dir: Path,
    on_step: Callable[[int], None] | None = None,
) -> BuildReport:
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(model_config(size, recipe))
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95))
    batches = torch.Generator().manual_seed(seed + 1)
    windows = torch.from_numpy(stream)
    structured = torch.from_numpy(
        icl_sequences(
            tokenizer,
            recipe.max_step * recipe.icl_rows,
            recipe.seq_len,
            seed=seed + 2,
            template=recipe.icl_template,
        )
    )  # [max_step * icl_rows, seq_len]
    family = torch.from_numpy(
        task_family_sequences(
            tokenizer,
            recipe.max_step * recipe.family_rows,
            recipe.seq_len,
            seed=seed + 3,
            template=recipe.icl_template,
        )
    )  # [max_step * family_rows, seq_len]
    text_rows = recipe.batch_size - recipe.icl_rows - recipe.family_rows
    checkpoints = set(pico_schedule(recipe.max_step))
    report = BuildReport(repo=repo, built=True, params=sum(p.numel() for p in model.parameters()))
    recent_losses: list[float] = []

    for step in range(recipe.max_step + 1):
        if step in checkpoints:
            loss = float(np.mean(recent_losses[-10:])) if recent_losses else None
            if loss is not None:
                report.loss_by_step[step] = loss
            metadata = {
                "suite": "pico",
                "repo": repo,
                "step": step,
                "seed": seed,
                "train_loss_last10": loss,
                "tokens_seen": step * recipe.batch_size * recipe.seq_len,
                "build_version": BUILD_VERSION,
            }
            publish_revision(hub_dir, repo, f"step{step}", model, tokenizer, metadata)
        if step == recipe.max_step:
            break
        starts = torch.randint(0, len(windows) - recipe.seq_len, (text_rows,), generator=batches)
        text = torch.stack([windows[s : s + recipe.seq_len] for s in starts.tolist()])
        mappings = structured[step * recipe.icl_rows : (step + 1) * recipe.icl_rows]
        tasks = family[step * recipe.family_rows : (step + 1) * recipe.family_rows]
        batch = torch.cat([text, mappings, tasks])  # [b, pos]
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, recipe)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent_losses.append(loss.item())
        if on_step:
            on_step(step + 1)

    report.seconds = time.perf_counter() - started
    return report


def build_pico(
    hub_dir: Path,
    sizes: tuple[str, ...] = ("xs", "s", "m"),
    seeds: tuple[int, ...] = (0,),
    recipe: PicoRecipe = PicoRecipe(),
    force: bool = False,
    on_step: Callable[[str, int, int], None] | None = None,
) -> list[BuildReport]:
    """Build (or skip, when already published) every size x seed; returns one report each."""
    suite = SUITES["pico"]
    wanted = {f"step{s}" for s in pico_schedule(recipe.max_step)}
    todo = [
        (size, seed, suite.repo_id(size, seed))
        for size in sizes
        for seed in seeds
        if force or not wanted <= published_revisions(hub_dir, suite.repo_id(size, seed))
    ]
    reports = [
        BuildReport(repo=suite.repo_id(size, seed), built=False)
        for size in sizes
        for seed in seeds
        if (size, seed, suite.repo_id(size, seed)) not in todo
    ]
    if not todo:
        return reports

    torch.use_deterministic_algorithms(True)
    texts = training_texts(recipe)
    tokenizer = train_tokenizer(texts)
    stream = token_stream(tokenizer, texts)
    for size, seed, repo in todo:

        def progress(step: int, repo: str = repo) -> None:
            if on_step:
                on_step(repo, step, recipe.max_step)

        reports.append(
            train_one(repo, PICO_SIZES[size], seed, recipe, tokenizer, stream, hub_dir, progress)
        )
    return reports
