"""How anything is keyed: code versions, config sections, the state of what a stage reads from outside.

A stage's fingerprint (:func:`fingerprints`) is

    sha256(its declared config sections, its inputs' fingerprints, its code version, its external state)

and names its artifact in the store. The *code version* (:func:`code_version`)
hashes the stage's own package and every cvops module it imports, transitively
(found by scanning imports, without importing anything), plus the versions of
the libraries it declares. The same function keys anything else built from
cvops code, e.g. the monitor's reference profile (:func:`files_version`), so
there is one way code enters a key.

:data:`PLUMBING` is the exception: modules that move artifacts and config values
(the runner, the store, config composition, this module) do not enter any code
version, since the values they move enter on their own.

This module imports no stage and never the runner; the runner, the commands
and the drift reference all key through it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from cvops.stages import Stage, StageFn, graph, registered, typed_view

PKG_DIR = Path(__file__).resolve().parent

#: Plumbing every stage imports (the runner, the store, config composition and checks, the stage declarations,
#: this module): it moves artifacts and config values, which enter fingerprints on their own; it does not shape
#: what a stage computes, so an edit to it does not invalidate every artifact (the stage packages and the shared
#: layers they use do). The console (what is printed, :mod:`cvops.console`) and the run's words
#: (:mod:`cvops.summary`) are plumbing too: rewording a line or a progress bar rebuilds nothing.
#: Paths relative to the package; one ending in ``/`` is a whole sub-package.
PLUMBING = frozenset({"runner.py", "stages.py", "fingerprint.py", "store/", "remote.py", "manifest.py", "config.py",
                      "recipes.py", "schema.py", "trust.py", "console.py", "summary.py", "report.py", "entrypoints.py",
                      "errors.py"})
#: The ways in (the Python API, the command line): they run stages, no stage's computation runs through them,
#: and a stage that reaches one only through the package's ``__init__.py`` (its lazy ``cvops.run``) must not
#: take the API's whole import graph (serve, drift, ...) into its code version.
ENTRANCES = frozenset({"api.py", "cli.py", "__main__.py", "commands/"})


def is_plumbing(rel: Path | str) -> bool:
    """True for a file (relative to the package) that :data:`PLUMBING` keeps out of every code version."""
    rel = Path(rel).as_posix()
    return rel in PLUMBING or any(p.endswith("/") and rel.startswith(p) for p in PLUMBING)


def is_entrance(rel: Path | str) -> bool:
    """True for a way in (:data:`ENTRANCES`): never part of a code version, however a stage reaches it."""
    rel = Path(rel).as_posix()
    return rel in ENTRANCES or any(p.endswith("/") and rel.startswith(p) for p in ENTRANCES)


def canonical(obj: Any) -> str:
    """The one JSON spelling of ``obj`` that is hashed (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any, digits: int = 16) -> str:
    """The first ``digits`` hex digits of the sha256 of ``obj``'s :func:`canonical` spelling."""
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:digits]


# --------------------------------------------------------------------------- code
@functools.lru_cache(maxsize=None)
def _module_file(module: str) -> Optional[Path]:
    """The source file of a ``cvops.*`` module (a package's ``__init__.py``), without importing it."""
    parts = module.split(".")
    if parts[0] != "cvops":
        return None
    base = PKG_DIR.joinpath(*parts[1:])
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#;]+)|import[ \t]+([^\n#;]+))",
                     re.M)


@functools.lru_cache(maxsize=None)
def _imports(path: Path) -> List[str]:
    """Every ``cvops`` module a file imports, at any depth (function-level imports included).

    A line scan, not a parse (a parse of the package costs a quarter second on every run): a
    docstring line that looks like an import can only add a file, never hide one.
    """
    try:
        here = ".".join(("cvops", *path.relative_to(PKG_DIR).with_suffix("").parts))
    except ValueError:  # a plug-in's file: its relative imports stay in its own package (hashed whole)
        here = "_plugin_.module"
    package = here.removesuffix(".__init__") if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    out: List[str] = []
    for m in _IMPORT.finditer(path.read_text(encoding="utf-8", errors="replace")):
        src, names, plain = m.groups()
        if plain is not None:
            out += [n.split()[0] for n in plain.split(",") if n.strip()]
            continue
        level = len(src) - len(src.lstrip("."))
        mod = src.lstrip(".")
        if level:
            base = package.split(".")
            base = base[: len(base) - (level - 1)] if level > 1 else base
            mod = ".".join(base + ([mod] if mod else []))
        out.append(mod)
        out += [f"{mod}.{n.split()[0]}" for n in names.strip("()").replace("\n", " ").split(",") if n.strip()]
    return [m for m in out if m == "cvops" or m.startswith("cvops.")]


@functools.lru_cache(maxsize=None)
def _depends(f: Path) -> List[Path]:
    """The cvops files one cvops file brings in: its packages' ``__init__.py`` and the modules it imports."""
    rel = f.relative_to(PKG_DIR)
    out = [PKG_DIR.joinpath(*rel.parts[:i], "__init__.py") for i in range(len(rel.parts))]
    for mod in _imports(f):
        p = _module_file(mod)
        if p is not None:
            out.append(p)
    return out


def clear_code_caches() -> None:
    """Forget the import scans of this process (for tests that edit cvops files or move ``PKG_DIR``)."""
    for f in (_imports, _module_file, _depends):
        f.cache_clear()


def source_closure(roots: Sequence[Path]) -> List[Path]:
    """``roots`` and every cvops file they import, transitively (not through :data:`PLUMBING`),
    with the parents' ``__init__.py``."""
    seen: Dict[Path, None] = {}
    todo = [p.resolve() for p in roots]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        if PKG_DIR not in f.parents:  # a plug-in's file outside cvops: itself and the cvops modules it imports
            if f.is_file() and f.suffix == ".py":
                seen[f] = None
                todo += [p for p in map(_module_file, _imports(f)) if p is not None]
            elif f.is_file():
                seen[f] = None
            continue
        if not f.is_file() or is_plumbing(f.relative_to(PKG_DIR)) or is_entrance(f.relative_to(PKG_DIR)):
            continue
        seen[f] = None
        todo += _depends(f)
    return sorted(seen)


def files_version(roots: Sequence[Path], libraries: Sequence[str] = ()) -> str:
    """The code version of whatever ``roots`` compute: every file of their :func:`source_closure` (path and
    bytes) and the installed version of each of ``libraries``; 16 hex digits.

    Args:
        roots: The files the computation starts from (cvops modules or a plug-in's own).
        libraries: Distributions whose versions shape the result (``none`` when not installed).
    """
    from cvops.manifest import dist_version

    h = hashlib.sha256()
    for f in source_closure(tuple(roots)):
        h.update(str(f.relative_to(PKG_DIR) if PKG_DIR in f.parents else f.name).encode())
        h.update(f.read_bytes())
    for lib in libraries:
        h.update(f"{lib}=={dist_version(lib) or 'none'}".encode())
    return h.hexdigest()[:16]


def _roots(stage: Stage, fn: Optional[StageFn]) -> List[Path]:
    """The files a stage's code version starts from: the package of its ``run`` module (every file in it),
    or a registered function's own module."""
    if fn is not None and registered(stage.name) is fn:
        src = inspect.getsourcefile(fn)
        return [Path(src)] if src else []
    parts = stage.run.partition(":")[0].split(".")
    if parts[0] == "cvops":  # a built-in: cvops/<stage>/
        if len(parts) == 2:
            return [PKG_DIR / f"{parts[1]}.py"]
        return sorted(PKG_DIR.joinpath(*parts[1:-1]).rglob("*.py"))
    spec = importlib.util.find_spec(".".join(parts[:-1]) or parts[0])
    if spec is None:
        return []
    if spec.submodule_search_locations:  # a plug-in's package: all of it
        return sorted(p for d in spec.submodule_search_locations for p in Path(d).rglob("*.py"))
    return [Path(spec.origin)] if spec.origin else []


def code_version(stage: Stage, fn: Optional[StageFn] = None) -> str:
    """Hash of the code that produces a stage's artifact.

    The stage's package (``cvops/<stage>/``, a plug-in's own package, or the
    module of a registered function) and every cvops module it imports,
    transitively (so an edit to the COCO evaluator in the detector layer
    rebuilds the exports that gate on it), plus the versions of the libraries
    it depends on.

    Args:
        stage: The stage's declaration.
        fn: The function that runs it; its own module counts only when it was registered in place of the
            declared one (:func:`cvops.stages.register_stage`).
    """
    return files_version(_roots(stage, fn), stage.libraries)


#: When this process started running stages (a module imported later may predate an edit made since: see
#: :func:`code_changed`)
STARTED = time.time()


def code_changed(stage: Stage, fn: Optional[StageFn], expected: str) -> Optional[str]:
    """Why the code that just ran may not be the code ``expected`` (the fingerprint's code version) names,
    or None. Either a file of the stage's code changed since the fingerprint was computed (a checkout
    during a long training), or a cvops file of it changed after this process started, so the module
    in memory may be older than the file that was hashed (a sweep's jobs share one process)."""
    clear_code_caches()
    files = source_closure(tuple(_roots(stage, fn)))
    if code_version(stage, fn) != expected:
        return "its code changed while it ran"
    late = [f for f in files if PKG_DIR in f.parents and f.stat().st_mtime > STARTED]
    if late:
        return (f"{late[0].relative_to(PKG_DIR.parent)} changed after this process started, so the code that ran "
                "may be older than the code its fingerprint names")
    return None


# --------------------------------------------------------------------------- config and external state
def _drop(d: Dict[str, Any], dotted: str) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.get(p, {}) if isinstance(d, dict) else {}
    if isinstance(d, dict):
        d.pop(parts[-1], None)


def config_sections(stage: Stage, cfg: Any) -> Dict[str, Any]:
    """The values of the config sections ``stage`` declares, less its ``exclude`` keys, as plain JSON data."""
    from cvops.config import to_container

    keyed = {key: to_container(cfg, key) for key in stage.sections}
    for ex in stage.exclude:
        _drop(keyed, ex)
    return json.loads(canonical(keyed))


def external(stage: Stage, cfg: Any) -> str:
    """The stage's ``external`` signature: the state of what it reads by name from outside the recipe (data
    folders, weights, the host), given the same typed view as the stage and this machine's side of the store."""
    from cvops.store import open_store

    mod, fun = stage.external.split(":")  # type: ignore[union-attr]
    view = typed_view(stage.name, cfg, stage.sections)
    store = str(cfg.paths.store)
    if "://" in store:  # an object store: its machine-local side (request logs) is the local cache
        store = str(open_store(cfg.paths).root)
    return getattr(importlib.import_module(mod), fun)(view, Path(store))


def fingerprints(cfg: Any, stages: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Any]]:
    """Fingerprint (and what went into it) of the recipe's stages, without running anything.

    Args:
        stages: only these and the stages upstream of them (None: every stage of the graph). A stage's
            ``external`` state can be costly to read (train's looks up pretrained weights, which may mean a
            download): a curate-only run or ``cvops app`` never reads train's.

    Returns:
        stage name -> ``{"fingerprint", "stage", "config", "inputs", "code"[, "external"]}``, in graph order.
    """
    order = graph(cfg)
    wanted = set(order) if stages is None else set()
    todo = [] if stages is None else [s for s in stages if s in order]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo += list(order[name].inputs)
    out: Dict[str, Dict[str, Any]] = {}
    for name, stage in order.items():
        if name not in wanted:
            continue
        payload = {
            "stage": name,
            "config": config_sections(stage, cfg),
            "inputs": {i: out[i]["fingerprint"] for i in stage.inputs},
            # a registered function's own module is its code; a declared stage is not imported here
            "code": code_version(stage, registered(name)),
        }
        if stage.external:
            payload["external"] = external(stage, cfg)
        out[name] = {"fingerprint": digest(payload), "stage": stage, **payload}
    return out


__all__ = ["PKG_DIR", "PLUMBING", "ENTRANCES", "STARTED", "is_plumbing", "is_entrance", "canonical", "digest", "source_closure", "files_version",
           "code_version", "code_changed", "clear_code_caches", "config_sections", "external", "fingerprints"]
