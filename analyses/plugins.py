"""Plug-ins: analyses from outside ckptlab, registered by the same ``@analysis`` decorator.

Three ways in:

- a spec's ``plugins:`` names a ``.py`` file (relative to the spec file's folder, like every
  file a spec names) or an importable module (``my_package.metrics``, also found in that
  folder when it is installed nowhere);
- an installed package declares entry points in the group ``ckptlab.analyses``
  (``[project.entry-points."ckptlab.analyses"] mine = "my_package.metrics"``): they load
  with the registry, everywhere ckptlab runs.

A file's code travels to the workers inside each unit (its text), so a file that exists only on
the laptop runs on every node; a module must be importable there (installed, or shipped by
``ckptlab submit`` in the runtime env's ``py_modules``). Each plug-in's analyses record their
origin and the sha256 of their source, which joins their cell keys.

Owns: turning a ``plugins:`` entry into ``PluginCode`` (its text and digest, found from the
folder it is given), loading it once per content, and the entry points. Must not: resolve a file
against the current directory (callers pass the spec's folder), or import ``ckptlab.spec`` (a
layer above).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

from ckptlab.analyses.registry import _LOADING, _REGISTRY, AnalysisCollision, Origin

ENTRY_POINT_GROUP = "ckptlab.analyses"
_MODULE_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class PluginError(ValueError):
    """A plug-in that cannot be found, read, imported or registered; one line."""


@dataclass(frozen=True)
class PluginCode:
    """What a worker needs to load one plug-in."""

    entry: str  # as the spec names it
    kind: str  # "file" | "module"
    source_hash: str
    source: str | None = None  # a file's text (travels with the task)
    path: str | None = None  # a file's absolute path, or a module's file / package folder


def is_file_entry(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def module_files(spec: importlib.machinery.ModuleSpec) -> list[Path]:
    """The source files of a module: the file itself, or every .py file of a package (of
    each of its folders, for a namespace package)."""
    if spec.submodule_search_locations is not None:
        return sorted(
            p
            for location in spec.submodule_search_locations
            for p in Path(location).rglob("*.py")
            if "__pycache__" not in p.parts
        )
    if not spec.origin or not spec.origin.endswith(".py"):
        raise PluginError(f"plugin {spec.name!r} is not Python source ({spec.origin})")
    return [Path(spec.origin)]


def _digest(files: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(root) if path.is_relative_to(root) else path.name
        digest.update(str(name).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def resolve(entry: str, base: Path) -> PluginCode:
    """Find a plug-in named by a spec, without importing it."""
    if is_file_entry(entry):
        path = (base / entry).resolve()
        if not path.is_file():
            raise PluginError(f"no such plug-in file: {entry}")
        data = path.read_bytes()
        return PluginCode(entry, "file", hashlib.sha256(data).hexdigest(), data.decode(), str(path))
    if not _MODULE_NAME.match(entry):
        raise PluginError(f"{entry!r} is neither a .py file nor a module name")
    top_name = entry.split(".")[0]
    beside = (base / top_name).is_dir() or (base / f"{top_name}.py").is_file()
    if (
        beside
        and str(base.resolve()) not in sys.path
        and importlib.util.find_spec(top_name) is None
    ):
        # A package in the spec's folder, installed nowhere: found there, as a file plug-in
        # would be (a console script's path does not hold the cwd).
        sys.path.insert(0, str(base.resolve()))
    try:
        spec = importlib.util.find_spec(entry)
    except (ImportError, ValueError) as err:
        raise PluginError(f"plug-in module {entry!r}: {err}") from None
    if spec is None:
        raise PluginError(f"no module named {entry!r} (install it, or name its .py file)")
    # The key follows the whole top-level package: a helper module next to the plug-in can
    # change its results as much as the plug-in's own file.
    top = importlib.util.find_spec(entry.split(".")[0])
    files = module_files(top)
    if top.submodule_search_locations is not None:
        folder = Path(next(iter(top.submodule_search_locations)))
        return PluginCode(entry, "module", _digest(files, folder.parent), None, str(folder))
    return PluginCode(entry, "module", _digest(files, files[0].parent), None, str(files[0]))


# (kind, entry, source hash) -> the analyses it registered, for every plug-in loaded in this
# process: loading is idempotent, and an edited file (new hash) replaces its old version.
_LOADED: dict[tuple[str, str, str], dict] = {}
_LATEST: dict[str, PluginCode] = {}


def _drop_origin(kind: str, where: str) -> None:
    for name in [
        n for n, d in _REGISTRY.items() if (d.origin.kind, d.origin.where) == (kind, where)
    ]:
        del _REGISTRY[name]


def load(code: PluginCode) -> list[str]:
    """Import a plug-in (once per content) and return the names of its analyses."""
    key = (code.kind, code.entry, code.source_hash)
    _LATEST[code.entry] = code
    if key in _LOADED:  # read before: put that version back (another may have replaced it)
        _drop_origin(code.kind, code.entry)
        _REGISTRY.update(_LOADED[key])
        return sorted(_LOADED[key])
    _drop_origin(code.kind, code.entry)  # an earlier version of the same plug-in
    token = _LOADING.set(Origin(code.kind, code.entry, code.source_hash))
    try:
        if code.kind == "file":
            stem = re.sub(r"\W", "_", Path(code.entry).stem)
            module = types.ModuleType(f"ckptlab_plugin_{stem}_{code.source_hash[:12]}")
            module.__file__ = code.path or code.entry
            sys.modules[module.__name__] = module  # dataclasses and pickling look it up
            exec(compile(code.source or "", code.path or code.entry, "exec"), module.__dict__)
        else:
            top = code.entry.split(".")[0]
            if importlib.util.find_spec(top) is None and code.path and Path(code.path).exists():
                # A package next to the spec, not installed: a worker on the same machine (a
                # local Ray) finds it where the driver did. On a cluster, submit ships it.
                sys.path.insert(0, str(Path(code.path).parent))
            importlib.import_module(code.entry)
    except AnalysisCollision as err:
        raise PluginError(f"plugin {code.entry}: {err}") from None
    except Exception as err:
        raise PluginError(f"plugin {code.entry}: {type(err).__name__}: {err}") from None
    finally:
        _LOADING.reset(token)
    mine = {n: d for n, d in _REGISTRY.items() if (d.origin.kind, d.origin.where) == key[:2]}
    if not mine:
        raise PluginError(f"plugin {code.entry} registers no analysis (no @analysis in it)")
    _LOADED[key] = mine
    return sorted(mine)


def load_all(entries: list[str], base: Path) -> list[PluginCode]:
    """Resolve and load a spec's plug-ins; the codes are what its units carry."""
    codes = []
    for i, entry in enumerate(entries):
        try:
            code = resolve(entry, base)
            load(code)
        except PluginError as err:
            raise PluginError(f"plugins[{i}]: {err}") from None
        codes.append(code)
    return codes


def loaded_code(entry: str) -> PluginCode | None:
    """The plug-in as it was last loaded (what the plan's keys were made from)."""
    return _LATEST.get(entry)


_ENTRY_POINTS_LOADED = False


def load_entry_points() -> None:
    """Import every installed ``ckptlab.analyses`` entry point, once per process."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = point.dist
        where = f"{point.value} ({dist.name} {dist.version})" if dist else point.value
        module_name = point.value.split(":")[0]
        try:
            spec = importlib.util.find_spec(module_name)
            files = module_files(spec) if spec else []
            digest = _digest(files, files[0].parent) if files else None
        except (ImportError, ValueError, PluginError):
            digest = None
        token = _LOADING.set(Origin("entry point", where, digest))
        try:
            point.load()
        except AnalysisCollision as err:
            raise PluginError(f"entry point {point.name!r} of {where}: {err}") from None
        except Exception as err:
            raise PluginError(
                f"entry point {point.name!r} of {where}: {type(err).__name__}: {err}"
            ) from None
        finally:
            _LOADING.reset(token)
