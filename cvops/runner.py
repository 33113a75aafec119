"""The stage graph: order, fingerprints, cache, run manifest.

Every stage is a function of (its config sections, its upstream artifacts) ->
(its artifacts, its metrics). For each stage the runner computes

    fingerprint = sha256(config sections, upstream fingerprints, code version)

before anything runs, reuses a complete artifact with that fingerprint from
the store, builds the rest in order under a file lock, and records every
decision in ``run.json`` (see :mod:`cvops.manifest`).

A stage implementation is ``run(ctx: StageContext) -> StageResult`` in
``cvops.<stage>.stage``; plug-ins and tests may :func:`register_stage` their own.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from cvops.artifacts import Artifact, ArtifactStore, StoreError
from cvops.config import ConfigError, to_container
from cvops.manifest import RunManifest

log = logging.getLogger("cvops")
PKG_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class StageSpec:
    """What defines a stage (its identity for the cache)."""

    name: str
    sections: Tuple[str, ...]  # config keys whose values enter the fingerprint
    inputs: Tuple[str, ...]  # upstream stages whose artifacts it reads
    libraries: Tuple[str, ...] = ()  # distributions whose versions enter the fingerprint
    cacheable: bool = True  # serve is a process, not an artifact
    exclude: Tuple[str, ...] = ()  # keys that do not change the result (train.resume)
    resume_key: Optional[str] = None  # when this key is true, an unfinished build is kept to resume from
    #: "module:function" of ``f(cfg) -> str``: the state of inputs outside the recipe (a request log, a folder,
    #: the host's TensorRT/GPU), added to the fingerprint so a change there means a new build
    external: Optional[str] = None
    issue: Optional[int] = None  # where an unimplemented stage is tracked


SPECS: Dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec("curate", ("project", "data", "curate"), (), ("fiftyone", "pillow", "opencv-python-headless"), issue=3),
        StageSpec("train", ("model", "train"), ("curate",), ("torch", "mmcv", "mmdet", "mmengine"), exclude=("train.resume",),
                  resume_key="train.resume", issue=4),
        StageSpec("evaluate", ("evaluate",), ("curate", "train"), ("pycocotools", "fiftyone"), issue=4),
        StageSpec("export", ("export", "evaluate.confusion_score_thr"), ("curate", "train"),
                  ("torch", "onnx", "onnxruntime", "onnxscript", "onnxslim", "tensorrt"),
                  external="cvops.export.host:signature", issue=5),
        StageSpec("serve", ("serve",), ("export",), cacheable=False, issue=6),
        StageSpec("monitor", ("monitor", "serve.log_dir"), ("curate", "train", "export"),
                  external="cvops.monitor.source:signature", issue=6),
    )
}
ORDER: Tuple[str, ...] = tuple(SPECS)

StageFn = Callable[["StageContext"], "StageResult"]
_REGISTRY: Dict[str, StageFn] = {}


def register_stage(name: str, fn: Optional[StageFn]) -> None:
    """Use ``fn`` as the implementation of stage ``name`` (None: back to the default)."""
    if name not in SPECS:
        raise KeyError(f"unknown stage '{name}'; stages: {', '.join(ORDER)}")
    if fn is None:
        _REGISTRY.pop(name, None)
    else:
        _REGISTRY[name] = fn


def implementation(name: str) -> Optional[StageFn]:
    """The stage's ``run`` function, or None while it is not implemented."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    module = f"cvops.{name}.stage"
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except ModuleNotFoundError:
        return None
    return getattr(importlib.import_module(module), "run")


@dataclass
class StageContext:
    """What a stage gets: its config, its inputs, a directory to write into."""

    name: str
    cfg: DictConfig  # the whole composed recipe
    section: Dict[str, Any]  # the stage's own resolved config sections
    workdir: Path  # artifact directory (empty unless resuming)
    inputs: Dict[str, Artifact]  # upstream artifacts by stage name
    run_dir: Path  # the Hydra run dir of this run
    fingerprint: str
    resuming: bool = False
    store_id: str = ""  # the artifact store's identity (ArtifactStore.id): names what this build owns elsewhere


@dataclass
class StageResult:
    """What a stage returns. ``artifacts`` maps names to paths inside ``workdir``."""

    artifacts: Dict[str, str] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    #: set when part of the stage could not run on this host (e.g. no GPU for TensorRT): the artifact is
    #: kept and used downstream, the stage is recorded ``skipped`` with this reason
    skipped: Optional[str] = None


class UpstreamMissing(ConfigError):
    """A requested stage needs an artifact that is neither stored nor requested."""


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _drop(d: Dict[str, Any], dotted: str) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.get(p, {}) if isinstance(d, dict) else {}
    if isinstance(d, dict):
        d.pop(parts[-1], None)


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
    here = ".".join(("cvops", *path.relative_to(PKG_DIR).with_suffix("").parts))
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


#: Plumbing every stage imports (the runner, the store, config composition and checks): it moves artifacts
#: and config values, which enter fingerprints on their own; it does not shape what a stage computes, so an
#: edit to it does not invalidate every artifact (the stage packages and the shared layers they use do).
PLUMBING = frozenset({"runner.py", "artifacts.py", "manifest.py", "config.py", "recipes.py", "schema.py", "trust.py"})


def source_closure(roots: Sequence[Path]) -> List[Path]:
    """``roots`` and every cvops file they import, transitively (not through :data:`PLUMBING`),
    with the parents' ``__init__.py``."""
    seen: Dict[Path, None] = {}
    todo = [p.resolve() for p in roots]
    while todo:
        f = todo.pop()
        if f in seen or not f.is_file():
            continue
        try:
            rel = f.relative_to(PKG_DIR)
        except ValueError:  # a plug-in's file outside cvops: itself only
            seen[f] = None
            continue
        if str(rel) in PLUMBING:
            continue
        seen[f] = None
        for i in range(len(rel.parts)):
            init = PKG_DIR.joinpath(*rel.parts[:i], "__init__.py")
            todo.append(init)
        for mod in _imports(f):
            p = _module_file(mod)
            if p is not None:
                todo.append(p.resolve())
    return sorted(seen)


def code_version(name: str, fn: Optional[StageFn]) -> str:
    """Hash of the code that produces a stage's artifact.

    The stage's source (its ``cvops/<stage>/`` package, or the module of a
    registered function) and every cvops module it imports, transitively (so
    an edit to the COCO evaluator rebuilds the exports that gate on it), plus
    the versions of the libraries it depends on.
    """
    h = hashlib.sha256()
    roots: List[Path] = []
    pkg = PKG_DIR / name
    if name not in _REGISTRY and pkg.is_dir():
        roots = sorted(pkg.rglob("*.py"))
    elif fn is not None:
        src = inspect.getsourcefile(fn)
        roots = [Path(src)] if src else []
    for f in source_closure(tuple(roots)):
        try:
            h.update(str(f.relative_to(PKG_DIR)).encode())
        except ValueError:
            h.update(f.name.encode())
        h.update(f.read_bytes())
    for lib in SPECS[name].libraries:
        try:
            h.update(f"{lib}=={importlib.metadata.version(lib)}".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{lib}==none".encode())
    return h.hexdigest()[:16]


def fingerprints(cfg: DictConfig, stages: Sequence[str] = ORDER) -> Dict[str, Dict[str, Any]]:
    """Fingerprint (and what went into it) of every stage, without running anything."""
    out: Dict[str, Dict[str, Any]] = {}
    for name in ORDER:
        spec = SPECS[name]
        section = {key: to_container(cfg, key) for key in spec.sections}
        keyed = json.loads(json.dumps(section))
        for ex in spec.exclude:
            _drop(keyed, ex)
        fn = implementation(name)
        payload = {
            "stage": name,
            "config": keyed,
            "inputs": {i: out[i]["fingerprint"] for i in spec.inputs},
            "code": code_version(name, fn),
        }
        if spec.external:
            mod, fun = spec.external.split(":")
            payload["external"] = getattr(importlib.import_module(mod), fun)(cfg)
        fp = hashlib.sha256(_canonical(payload).encode()).hexdigest()[:16]
        out[name] = {"fingerprint": fp, "section": section, "implementation": fn, **payload}
    return out


class Runner:
    """Runs the requested stages of one composed recipe.

    Args:
        cfg: the composed, validated recipe.
        run_dir: the Hydra run dir; ``run.json`` goes there.
        recipe: the recipe name (for the manifest), if any.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, recipe: Optional[str] = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.store = ArtifactStore(cfg.paths.store)
        self.requested = self._requested(list(cfg.stages))
        self.manifest = RunManifest(self.run_dir / "run.json", cfg, recipe)

    @staticmethod
    def _requested(stages: List[str]) -> List[str]:
        unknown = [s for s in stages if s not in SPECS]
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown} in 'stages'; choose from {list(ORDER)}")
        if len(set(stages)) != len(stages):
            raise ConfigError(f"'stages' lists a stage twice: {stages}")
        return [s for s in ORDER if s in stages]

    def plan(self) -> Dict[str, Dict[str, Any]]:
        """Fingerprints for every stage; checks that requested stages have their inputs.

        Raises:
            UpstreamMissing: naming the stage to run first and the command to do it.
        """
        fps = fingerprints(self.cfg)

        def missing(stage: str, seen: set) -> List[str]:  # upstream stages neither requested nor stored
            out: List[str] = []
            for up in SPECS[stage].inputs:
                if up in seen or up in self.requested or self.store.is_complete(up, fps[up]["fingerprint"]):
                    continue
                seen.add(up)
                out += [up, *missing(up, seen)]
            return out

        for name in self.requested:
            absent = missing(name, set())
            if absent:
                need = [s for s in ORDER if s in self.requested or s in absent]
                what = ", ".join(f"'{u}' (fingerprint {fps[u]['fingerprint']})" for u in ORDER if u in absent)
                raise UpstreamMissing(
                    f"stage '{name}' needs the {what} artifact{'s' if len(absent) > 1 else ''} for this config, "
                    f"which {'are' if len(absent) > 1 else 'is'} not in the store {self.store.root}. "
                    f"Run {'them' if len(absent) > 1 else 'it'} in the same command: stages=[{','.join(need)}]"
                )
        return fps

    def run(self) -> RunManifest:
        """Run (or reuse) every requested stage; always leaves ``run.json``."""
        self.manifest.start()
        done: Dict[str, Artifact] = {}
        blocked: Dict[str, str] = {}  # stage -> why its dependants cannot run
        try:
            self.store.check_writable()
            fps = self.plan()
            log.info("cvops · %s · run dir %s · store %s", self.cfg.project, self.run_dir, self.store.root)
            for name in ORDER:
                spec, fp = SPECS[name], fps[name]["fingerprint"]
                if name not in self.requested:
                    users = [r for r in self.requested if name in SPECS[r].inputs]
                    art = self.store.get(name, fp) if spec.cacheable and users else None
                    if art is not None:
                        done[name] = art
                        self._cached(art, time.perf_counter(), f"pulled in from the store as input of {', '.join(users)}")
                    continue
                why = next((f"input '{u}' {blocked[u]}" for u in spec.inputs if u in blocked), None)
                if why:
                    self._skip(name, fp, why)
                    blocked[name] = "was not built"
                    continue
                fn = fps[name]["implementation"]
                if fn is None:
                    why = f"the {name} stage is not implemented in this cvops version yet (issue #{spec.issue})"
                    self._skip(name, fp, why)
                    blocked[name] = "is not implemented yet"
                    continue
                art = self._run_stage(name, fp, fps[name], fn, done)
                if art is not None:
                    done[name] = art
        except BaseException as e:
            self.manifest.finish(error=f"{type(e).__name__}: {e}")
            raise
        self.manifest.finish()
        return self.manifest

    # ------------------------------------------------------------ helpers
    def _skip(self, name: str, fp: str, reason: str) -> None:
        self.manifest.stage(name, status="skipped", fingerprint=fp, seconds=0.0, reason=reason)
        log.info("  %-9s skipped  %s", name, reason)

    def _context(self, name: str, fp: str, info: Dict[str, Any], workdir: Path, done: Dict[str, Artifact], resuming: bool) -> StageContext:
        inputs = {u: done[u] for u in SPECS[name].inputs}
        return StageContext(name, self.cfg, info["section"], workdir, inputs, self.run_dir, fp, resuming,
                            store_id=self.store.id)

    def _run_stage(self, name: str, fp: str, info: Dict[str, Any], fn: StageFn, done: Dict[str, Artifact]) -> Optional[Artifact]:
        spec = SPECS[name]
        t0 = time.perf_counter()
        if not spec.cacheable:
            workdir = self.run_dir / name
            workdir.mkdir(parents=True, exist_ok=True)
            try:
                result = fn(self._context(name, fp, info, workdir, done, False))
            except BaseException as e:
                self._failed(name, fp, t0, e)
                raise
            secs = time.perf_counter() - t0
            self.manifest.stage(name, status="ran", fingerprint=fp, seconds=secs,
                                artifacts={k: str(workdir / v) for k, v in result.artifacts.items()}, metrics=result.metrics)
            log.info("  %-9s ran      %6.1fs", name, secs)
            return None

        existing = self.store.get(name, fp)
        if existing is not None:
            self._cached(existing, t0, "in the store")
            return existing
        keep = bool(OmegaConf.select(self.cfg, spec.resume_key)) if spec.resume_key else False

        def waiting(d: Path) -> None:
            log.info("  %-9s waiting  another run is building %s", name, d)

        with self.store.build(name, fp, timeout=float(self.cfg.lock_timeout_s), keep_partial=keep, on_wait=waiting) as builder:
            if builder is None:  # a concurrent run finished it while we waited
                art = self.store.get(name, fp)
                assert art is not None
                self._cached(art, t0, "built by a concurrent run")
                return art
            log.info("  %-9s running  fp %s -> %s", name, fp, builder.dir)
            resuming = keep and any(builder.dir.iterdir())
            try:
                result = fn(self._context(name, fp, info, builder.dir, done, resuming))
                secs = time.perf_counter() - t0
                art = builder.commit({
                    "stage": name,
                    "fingerprint": fp,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "seconds": round(secs, 3),
                    "run_dir": str(self.run_dir),
                    "config": info["config"],
                    "inputs": info["inputs"],
                    "code": info["code"],
                    "artifacts": result.artifacts,
                    "metrics": result.metrics,
                    **({"skipped": result.skipped} if result.skipped else {}),
                })
            except BaseException as e:
                self._failed(name, fp, t0, e)
                raise
        if result.skipped:
            self.manifest.stage(name, status="skipped", fingerprint=fp, seconds=secs, artifacts=self._abs(art),
                                metrics=art.metrics, reason=result.skipped)
            log.info("  %-9s skipped  %6.1fs  (partly: %s) fp %s -> %s", name, secs, result.skipped, fp, art.dir)
            return art
        self.manifest.stage(name, status="ran", fingerprint=fp, seconds=secs,
                            artifacts=self._abs(art), metrics=art.metrics)
        log.info("  %-9s ran      %6.1fs  fp %s -> %s", name, secs, fp, art.dir)
        return art

    def _cached(self, art: Artifact, t0: float, why: str) -> None:
        secs = time.perf_counter() - t0
        if art.manifest.get("skipped"):  # still partly skipped: say so again, from the cache
            self.manifest.stage(art.stage, status="skipped", fingerprint=art.fingerprint, seconds=secs,
                                artifacts=self._abs(art), metrics=art.metrics,
                                reason=f"{art.manifest['skipped']} (cached: {why})")
            log.info("  %-9s skipped  (cached, partly: %s) -> %s", art.stage, art.manifest["skipped"], art.dir)
            return
        self.manifest.stage(art.stage, status="cached", fingerprint=art.fingerprint, seconds=secs,
                            artifacts=self._abs(art), metrics=art.metrics,
                            reason=f"{why} (built {art.manifest.get('created', '?')} by {art.manifest.get('run_dir', '?')})")
        log.info("  %-9s cached   fp %s %s -> %s", art.stage, art.fingerprint, why, art.dir)

    def _failed(self, name: str, fp: str, t0: float, e: BaseException) -> None:
        reason = f"{type(e).__name__}: {e}"
        self.manifest.stage(name, status="failed", fingerprint=fp, seconds=time.perf_counter() - t0, reason=reason)
        log.error("  %-9s FAILED   %s", name, reason)

    @staticmethod
    def _abs(art: Artifact) -> Dict[str, str]:
        return {"dir": str(art.dir), **{k: str(art.dir / v) for k, v in art.manifest.get("artifacts", {}).items()}}


__all__ = ["Runner", "StageContext", "StageResult", "StageSpec", "SPECS", "ORDER", "register_stage",
           "fingerprints", "UpstreamMissing", "StoreError"]
