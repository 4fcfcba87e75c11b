"""Checkpointed model suites: which hub repos a (suite, size, seed) names and which training
steps exist. Revision names follow the suite's convention (``step{N}`` for Pythia and pico)."""

from __future__ import annotations

from dataclasses import dataclass


def pythia_schedule() -> list[int]:
    """Pythia's 154 checkpoints: 0, 1, 2, 4, ..., 512, then every 1000 up to 143000."""
    return [0] + [2**i for i in range(10)] + list(range(1000, 143_001, 1000))


def pico_schedule(max_step: int = 1000) -> list[int]:
    """The pico suite's checkpoints, Pythia-like: 0, 1, 2, 4, ..., 64, then every 100."""
    steps = [0] + [2**i for i in range(7)] + list(range(100, max_step + 1, 100))
    return [s for s in steps if s <= max_step]


@dataclass(frozen=True)
class Suite:
    name: str
    sizes: tuple[str, ...]
    schedule: tuple[int, ...]
    repo_template: str  # formatted with size, dedup suffix, seed suffix
    seeded_sizes: tuple[str, ...] = ()  # sizes that have seed variants (seed 0 = the original)
    max_seed: int = 0
    has_deduped: bool = False

    def repo_id(self, size: str, seed: int = 0, deduped: bool = False) -> str:
        dedup = "-deduped" if deduped else ""
        seed_suffix = f"-seed{seed}" if seed else ""
        return self.repo_template.format(size=size, dedup=dedup, seed=seed_suffix)

    def revision(self, step: int) -> str:
        return f"step{step}"


SUITES: dict[str, Suite] = {
    "pythia": Suite(
        name="pythia",
        sizes=("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"),
        schedule=tuple(pythia_schedule()),
        repo_template="EleutherAI/pythia-{size}{dedup}{seed}",
        # PolyPythias: EleutherAI/pythia-{14m..410m}-seed{1..9}
        seeded_sizes=("14m", "31m", "70m", "160m", "410m"),
        max_seed=9,
        has_deduped=True,
    ),
    "pico": Suite(
        name="pico",
        sizes=("xs", "s", "m"),
        schedule=tuple(pico_schedule()),
        repo_template="pico/pico-{size}{dedup}{seed}",
        seeded_sizes=("xs", "s", "m"),
        max_seed=9,
    ),
}
