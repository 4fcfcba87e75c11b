"""Input-set documents from a hub dataset (wikitext-103 validation, a Pile validation shard):
the files of one config and split at a pinned revision, downloaded with huggingface_hub into
the hub cache (or read from it offline), one document per row's text field.

Owns: which files of a dataset revision an input set reads, and their texts (``hub_documents``).
Must not: tokenize or cut windows (``inputs.py``), or look online while the hub is offline
(``HF_HUB_OFFLINE``: the cache alone is read).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from ckptlab.errors import one_line
from ckptlab.hub import hub_offline
from ckptlab.spec import HubCorpus

READABLE = (".parquet", ".jsonl", ".json", ".txt")


class HubCorpusError(ValueError):
    """A hub dataset that cannot give documents; ``str(err)`` is one line."""


def _patterns(corpus: HubCorpus) -> list[str]:
    if corpus.files:
        return corpus.files
    split = corpus.split
    if corpus.config:
        return [f"{corpus.config}/{split}-*", f"{corpus.config}/{split}/*"]
    return [f"data/{split}-*", f"{split}-*", f"{split}.*", f"data/{split}.*"]


def _cached(repo: str, revision: str, cache_dir: Path) -> tuple[str, list[str]] | None:
    """(commit, files) of a revision already in the hub cache (offline)."""
    storage = Path(cache_dir) / f"datasets--{repo.replace('/', '--')}"
    ref = storage / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = storage / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    return commit, [str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()]


def _listing(corpus: HubCorpus, cache_dir: Path, offline: bool) -> tuple[str, list[str]]:
    if offline:
        found = _cached(corpus.repo, corpus.revision, cache_dir)
        if found is None:
            raise HubCorpusError(
                f"dataset {corpus.repo}@{corpus.revision} is not in the local hub cache "
                "(offline: HF_HUB_OFFLINE=1)"
            )
        return found
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        info = api.dataset_info(corpus.repo, revision=corpus.revision)
        files = api.list_repo_files(corpus.repo, repo_type="dataset", revision=info.sha)
    except Exception as err:
        raise HubCorpusError(
            f"dataset {corpus.repo}@{corpus.revision}: {one_line(err, first=True)}"
        ) from None
    return info.sha, files


def _rows(path: Path, field: str) -> list[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=[field])
        return [str(v) for v in table.column(field).to_pylist() if v is not None]
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [str(r[field]) for r in records if r.get(field) is not None]


def hub_documents(corpus: HubCorpus, cache_dir: Path) -> tuple[str, list[str]]:
    """(source, documents): the non-empty texts of the split's files, in file order."""
    from huggingface_hub import hf_hub_download

    offline = hub_offline()
    commit, files = _listing(corpus, cache_dir, offline)
    chosen = sorted(
        f
        for f in files
        if f.endswith(READABLE) and any(fnmatch.fnmatch(f, p) for p in _patterns(corpus))
    )
    if not chosen:
        raise HubCorpusError(
            f"dataset {corpus.repo}@{commit[:12]}: no parquet, JSON or text file matches "
            f"{_patterns(corpus)}; set hub.files"
        )
    texts: list[str] = []
    for filename in chosen:
        try:
            # By the revision's name, so that the cache records it (refs/<name>) for offline
            # runs; the file must come from the commit that was listed.
            local = Path(
                hf_hub_download(
                    corpus.repo,
                    filename,
                    repo_type="dataset",
                    revision=corpus.revision,
                    cache_dir=cache_dir,
                    local_files_only=offline,
                )
            )
            if commit not in local.parts:
                raise HubCorpusError(f"dataset {corpus.repo}@{corpus.revision} moved while read")
            texts += [t for t in _rows(local, corpus.field) if t.strip()]
        except HubCorpusError:
            raise
        except KeyError:
            raise HubCorpusError(f"{filename}: no field {corpus.field!r}") from None
        except Exception as err:
            raise HubCorpusError(f"{filename}: {one_line(err, first=True)}") from None
    where = f"{corpus.config}/" if corpus.config else ""
    return f"hub:{corpus.repo}@{commit[:12]}/{where}{corpus.split}:{corpus.field}", texts
