"""Which checkpoints a spec names and what they are on the hub: the models expanded into
checkpoints (suites' revision names, listed repos, local folders), each revision resolved to
its commit, each commit's weight files (format, shards, their sha256) from the hub's
metadata, and the folder of its tokenizer.

Owns: ``CheckpointRef`` and the hub listings of planning. Must not: download a weight file
(tokenizer and config files only), or know about cells, analyses or the results database
(``plan.py`` builds on this).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ckptlab.catalog import SUITES, Checkpoint, Suite, training_order
from ckptlab.errors import one_line
from ckptlab.hub import (
    CheckpointError,
    cached_commit,
    fetch_snapshot,
    hub_offline,
    local_checkpoint,
    not_cached_reason,
    resolve_commits,
)
from ckptlab.spec import (
    HubModels,
    LocalModels,
    Spec,
    SpecError,
    SuiteModels,
    select_checkpoints,
    step_from_revision,
)
from ckptlab.weights import (
    WeightLayout,
    WeightsError,
    choose_layout,
    layout_of_folder,
    list_revisions_files,
    remember_refs,
    repo_cache_folder,
)


@dataclass(frozen=True)
class CheckpointRef:
    model: str  # hub repo id, or the local directory
    revision: str
    step: int
    source: str  # "hub" or "local"
    local_only: bool  # never ask the network (pico lives only in the local hub cache)
    suite: str | None = None
    size: str | None = None
    seed: int | None = None
    # Tokens seen since the start of training (the suite's axis; None: unknown), and the
    # training stage the revision names ('stage2'; None for single-stage runs).
    tokens_seen: int | None = None
    stage: str | None = None

    @property
    def label(self) -> str:
        return f"{self.model}@{self.revision}"

    @property
    def order(self) -> tuple:
        return training_order(self.tokens_seen, self.stage, self.step, self.seed, self.revision)


@dataclass(frozen=True)
class Listing:
    """A repo's revisions: name -> commit, from the hub (``online``) or the local cache."""

    commits: dict[str, str]
    online: bool


# Where a placeholder stands for the revisions of a repo that could not be listed: its unit is
# unresolved with the listing's reason, one line per model in ``ckptlab plan``.
UNLISTED = "(revisions)"


def list_revisions(
    repo: str, hub_dir: Path | None, *, local_only: bool
) -> Listing | CheckpointError:
    """Every revision of a repo with its commit: ``HfApi.list_repo_refs`` (branches and tags)
    with hub access; offline, the refs of the local hub cache (those whose snapshot is there,
    read as ``resolve_commits`` reads them)."""
    offline = local_only or hub_offline()
    if not offline:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            refs = HfApi().list_repo_refs(repo)
        except RepositoryNotFoundError:
            return CheckpointError(repo, "no such repo")
        except Exception as err:
            return CheckpointError(repo, f"cannot list revisions: {one_line(err, 300, first=True)}")
        known = {r.name: r.target_commit for r in [*refs.branches, *refs.tags]}
        remember_refs(repo, known)
        return Listing(known, True)
    commits: dict[str, str] = {}
    if hub_dir is not None:
        refs_dir = repo_cache_folder(hub_dir, repo) / "refs"
        names = [p.relative_to(refs_dir).as_posix() for p in refs_dir.rglob("*") if p.is_file()]
        for name in sorted(names):
            commit = cached_commit(repo, name, Path(hub_dir))
            if commit:
                commits[name] = commit
    if not commits:
        return CheckpointError(repo, not_cached_reason(True))
    return Listing(commits, False)


def _requested_steps(steps) -> list[int]:
    items = steps if isinstance(steps, list) else [steps]
    return [item for item in items if isinstance(item, int) and not isinstance(item, bool)]


def suite_checkpoints(
    suite: Suite,
    source: SuiteModels,
    size: str,
    repo: str,
    hub_dir: Path | None,
    listings: dict[str, Listing | CheckpointError],
) -> tuple[list[Checkpoint], bool]:
    """The checkpoints a suite has for one repo, and whether that is all of them: its known
    schedule, else the repo's listed revisions parsed with the suite's convention. Offline,
    the cache holds only what was downloaded (not all): a requested step the cache lacks is
    still a checkpoint when the suite can name its revision (it will be unresolved, 'not in
    the local hub cache'); a repo that cannot be listed at all is one placeholder checkpoint,
    unresolved with the reason."""
    known = suite.checkpoints(size)
    if known is not None:
        return known, True
    if repo not in listings:
        listings[repo] = list_revisions(repo, hub_dir, local_only=suite.local_only)
    listing = listings[repo]
    found = (
        [] if isinstance(listing, CheckpointError) else suite.from_revisions(listing.commits, size)
    )
    if isinstance(listing, Listing) and listing.online:
        return found, True
    if suite.revision_format is not None:
        have = {c.step for c in found}
        for step in _requested_steps(source.steps):
            if step not in have:
                named = suite.parse(suite.revision(step), size)
                if named is not None:
                    found.append(named)
    return sorted(found, key=lambda c: c.order), False


def expand_checkpoints(
    spec: Spec,
    hub_dir: Path | None = None,
    listings: dict[str, Listing | CheckpointError] | None = None,
) -> list[CheckpointRef]:
    """Every checkpoint the spec names, in spec order (a suite's in training order).
    ``listings`` collects the revision listings made on the way (repo -> listing), which
    ``resolve`` then reads instead of asking the hub again."""
    listings = {} if listings is None else listings
    refs: list[CheckpointRef] = []
    for i, source in enumerate(spec.models):
        if isinstance(source, SuiteModels):
            suite = SUITES[source.suite]
            for size in source.sizes:
                for seed in source.seeds:
                    repo = suite.repo_id(size, seed, source.deduped)
                    known, complete = suite_checkpoints(
                        suite, source, size, repo, hub_dir, listings
                    )
                    try:
                        chosen = select_checkpoints(source.steps, known, f"models[{i}].steps")
                    except SpecError:
                        if complete:
                            raise
                        # Offline, what the cache lacks is unresolved, not a spec error.
                        chosen = [c for c in known if c.step in _requested_steps(source.steps)]
                        chosen = chosen or [Checkpoint(UNLISTED, 0)]
                    refs += [
                        CheckpointRef(
                            c.repo or repo,
                            c.revision,
                            c.step,
                            "hub",
                            local_only=suite.local_only,
                            suite=suite.name,
                            size=size,
                            seed=seed if c.seed is None else c.seed,
                            tokens_seen=c.tokens,
                            stage=c.stage,
                        )
                        for c in chosen
                    ]
        elif isinstance(source, HubModels):
            for rev in source.revisions:
                step = step_from_revision(rev, source.step_pattern, "revisions")
                refs.append(CheckpointRef(source.repo, rev, step, "hub", local_only=False))
        else:
            refs += _local_checkpoints(source, spec.resolve(source.path))
    # The same checkpoint listed twice is one unit.
    return list(dict.fromkeys(refs))


def _local_checkpoints(source: LocalModels, folder: Path) -> list[CheckpointRef]:
    root = folder.resolve()
    if source.revisions == "all":
        revisions = sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())
    else:
        revisions = list(source.revisions)
    refs = [
        CheckpointRef(
            str(root),
            rev,
            step_from_revision(rev, source.step_pattern, "revisions"),
            "local",
            local_only=True,
        )
        for rev in revisions
    ]
    return sorted(refs, key=lambda r: r.step)


def resolve(
    refs: list[CheckpointRef],
    hub_dir: Path,
    listings: dict[str, Listing | CheckpointError] | None = None,
) -> dict[CheckpointRef, str | CheckpointError]:
    """Commit sha of every checkpoint (the content hash of the folder for local ones). A repo
    listed from the hub while expanding is resolved from that listing (no second call); one
    that could not be listed gives its reason to each of its checkpoints."""
    listings = listings or {}
    resolved: dict[CheckpointRef, str | CheckpointError] = {}
    by_repo: dict[tuple[str, bool], list[CheckpointRef]] = {}
    for ref in refs:
        if ref.source == "local":
            try:
                resolved[ref] = local_checkpoint(Path(ref.model), ref.revision)[1]
            except CheckpointError as err:
                resolved[ref] = err
        else:
            by_repo.setdefault((ref.model, ref.local_only), []).append(ref)
    for (repo, local_only), repo_refs in by_repo.items():
        listing = listings.get(repo)
        if isinstance(listing, CheckpointError):
            resolved.update({r: CheckpointError(r.label, listing.reason) for r in repo_refs})
            continue
        if isinstance(listing, Listing) and listing.online:
            resolved.update(
                {
                    r: listing.commits.get(r.revision)
                    or CheckpointError(r.label, "no such revision")
                    for r in repo_refs
                }
            )
            continue
        commits = resolve_commits(
            repo, [r.revision for r in repo_refs], hub_dir, local_only=local_only
        )
        resolved.update({r: commits[r.revision] for r in repo_refs})
    return resolved


def tokenizer_folder(ref: CheckpointRef, hub_dir: Path, remote_code: bool = False) -> Path:
    """Where the checkpoint's tokenizer is: planning fetches no weight file (and the repo's
    own code only when the spec trusts it: a custom tokenizer needs it)."""
    if ref.source == "local":
        return Path(ref.model) / ref.revision
    return fetch_snapshot(
        ref.model,
        ref.revision,
        hub_dir,
        local_only=ref.local_only,
        weights=False,
        remote_code=remote_code,
    )[0]


def weight_layouts(
    spec: Spec, refs: list[CheckpointRef], commits: dict, hub_dir: Path
) -> dict[CheckpointRef, WeightLayout | str]:
    """Each resolved checkpoint's weight files and format, from the hub's tree listings
    (fetched concurrently, cached by commit) or offline the local cache: no weight file is
    downloaded. A checkpoint whose weights cannot be loaded gets its one-line reason."""
    allow_pickle = spec.loading.allow_pickle_weights
    online: list[tuple[str, str]] = []
    offline: list[tuple[str, str]] = []
    for ref in refs:
        commit = commits[ref]
        if ref.source == "hub" and not isinstance(commit, CheckpointError):
            asks_hub = not (ref.local_only or hub_offline())
            (online if asks_hub else offline).append((ref.model, commit))
    listed = {}
    if online:
        listed |= list_revisions_files(online, hub_dir, online=True)
    if offline:
        listed |= list_revisions_files(offline, hub_dir, online=False)
    layouts: dict[CheckpointRef, WeightLayout | str] = {}
    for ref in refs:
        commit = commits[ref]
        if isinstance(commit, CheckpointError):
            continue
        if ref.source == "local":
            try:
                layouts[ref] = layout_of_folder(Path(ref.model) / ref.revision, allow_pickle)
            except WeightsError as err:
                layouts[ref] = str(err)
            continue
        files = listed[(ref.model, commit)]
        if isinstance(files, str):
            # Offline, not cached is a reason; a listing the hub failed to give is not: the
            # unit downloads with the default patterns and load_model decides.
            if (ref.model, commit) in offline:
                layouts[ref] = files
            continue
        try:
            layouts[ref] = choose_layout(files, allow_pickle)
        except WeightsError as err:
            # Offline the cache lists what was downloaded: no weights there is not a defect.
            downloaded_only = (ref.model, commit) in offline and not any(
                name.endswith((".safetensors", ".bin")) for name in files
            )
            layouts[ref] = "weights " + not_cached_reason(True) if downloaded_only else str(err)
    return layouts
