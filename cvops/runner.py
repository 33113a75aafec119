"""The stage graph: order, cache, run manifest, hooks (orchestration only).

Every stage (declared in :mod:`cvops.stages`) is a function of (its declared
config sections, its declared upstream artifacts) -> (its artifacts, its
metrics). For each stage the runner takes its fingerprint
(:func:`cvops.fingerprint.fingerprints`)

    fingerprint = sha256(config sections, upstream fingerprints, code version)

before anything runs, reuses a complete artifact with that fingerprint from
the store, builds the rest in order under a file lock, and records every
decision in ``run.json`` (see :mod:`cvops.manifest`). The stage sees only what
its fingerprint covers: ``ctx.config`` holds the declared sections alone.

Around each stage the runner calls its hooks (:class:`Hooks`): the tracker is
started and finished there, and the stage's reports are published into the
run dir, whether it ran or came from the cache.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from cvops.config import to_container
from cvops.errors import ConfigError, StaleCode, UpstreamMissing
from cvops.fingerprint import code_changed, fingerprints
from cvops.manifest import RunManifest
from cvops.stages import (BUILTIN_NAMES, Stage, StageContext, StageFn, StageResult, declared, graph, implementation,
                          register_stage, typed_view)
from cvops.store import Artifact, StoreError, open_store

log = logging.getLogger("cvops")  # the console's lines: one per stage start and finish
detail = logging.getLogger("cvops.detail")  # cvops.log only: fingerprints, store paths

#: The built-in lifecycle order (a recipe's graph may add plug-in stages: :func:`cvops.stages.graph`).
ORDER = BUILTIN_NAMES


class Hooks:
    """Called by the runner around every stage; subclass and pass ``Runner(..., hooks=[...])``.

    The default set (:func:`default_hooks`) starts and finishes the tracker
    and publishes each stage's reports into the run dir.
    """

    def before_stage(self, ctx: StageContext) -> None:
        """The stage is about to build (not called for a cached stage)."""

    def after_stage(self, ctx: StageContext, art: Optional[Artifact], result: StageResult) -> None:
        """The stage built (``art`` is None for a stage that is not cached, e.g. serve)."""

    def on_cached(self, art: Artifact, run_dir: Path) -> None:
        """The stage's artifact came from the store."""

    def on_failure(self, ctx: StageContext, error: BaseException) -> None:
        """The stage raised; the run stops after the hooks ran."""


class TrackerHook(Hooks):
    """The recipe's tracker, once per stage: started by the stage's first log, finished here."""

    def before_stage(self, ctx: StageContext) -> None:
        pass  # ctx.tracker is made by the runner; it starts lazily

    def after_stage(self, ctx: StageContext, art: Optional[Artifact], result: StageResult) -> None:
        ctx.tracker.close(result.metrics)
        ref = ctx.tracker.run_ref
        if ref is None and result.artifacts.get("wandb_run"):  # mmengine's W&B backend owned the run (train)
            ref = str(ctx.workdir / result.artifacts["wandb_run"])
            if art is not None:
                ref = str(art.dir / result.artifacts["wandb_run"])
        if ref:
            where = ref if "://" in ref else f"{ref} (offline; upload: wandb sync {ref})"
            log.info("  %-9s W&B run  %s", ctx.name, where)

    def on_failure(self, ctx: StageContext, error: BaseException) -> None:
        ctx.tracker.close({"failed": f"{type(error).__name__}: {error}"})


class ReportsHook(Hooks):
    """Each stage's reports (``StageResult.reports``, kept in its manifest) appear in ``<run dir>/<stage>/``:
    copied when small, linked to the store when large (checkpoints)."""

    LINK_ABOVE = 8 << 20

    def after_stage(self, ctx: StageContext, art: Optional[Artifact], result: StageResult) -> None:
        if art is not None:
            self.publish(art, ctx.run_dir)

    def on_cached(self, art: Artifact, run_dir: Path) -> None:
        self.publish(art, run_dir)

    def publish(self, art: Artifact, run_dir: Path) -> None:
        out = run_dir / art.stage
        for rel in art.manifest.get("reports", []):
            src = art.dir / rel
            if not src.exists():
                continue
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_symlink() or dst.is_file():
                dst.unlink()
            elif dst.is_dir():
                shutil.rmtree(dst)
            if src.is_dir():
                shutil.copytree(src, dst, symlinks=True)
            elif src.stat().st_size > self.LINK_ABOVE:
                dst.symlink_to(src.resolve())
            else:
                shutil.copyfile(src, dst)


def default_hooks() -> List[Hooks]:
    return [TrackerHook(), ReportsHook()]


class Runner:
    """Runs the requested stages of one composed recipe.

    Args:
        cfg: the composed, validated recipe.
        run_dir: the Hydra run dir; ``run.json`` goes there.
        recipe: the recipe name (for the manifest), if any.
        hooks: called around every stage (default: :func:`default_hooks`).
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, recipe: Optional[str] = None,
                 hooks: Optional[Sequence[Hooks]] = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.store = open_store(cfg.paths)
        self.graph = graph(cfg)
        self.requested = self._requested(list(cfg.stages))
        self.recipe = recipe
        self.manifest = RunManifest(self.run_dir / "run.json", cfg, recipe)
        self.hooks = list(default_hooks() if hooks is None else hooks)

    def _requested(self, stages: List[str]) -> List[str]:
        unknown = [s for s in stages if s not in self.graph]
        if unknown:
            inactive = [s for s in unknown if s in declared()]
            hint = (f"; {inactive} {'is a plug-in stage' if len(inactive) == 1 else 'are plug-in stages'} whose "
                    f"config group the recipe does not select: add {', '.join(f'{s}=default' for s in inactive)}"
                    if inactive else "")
            raise ConfigError(f"unknown stage(s) {unknown} in 'stages'; choose from {list(self.graph)}{hint}")
        if len(set(stages)) != len(stages):
            raise ConfigError(f"'stages' lists a stage twice: {stages}")
        return [s for s in self.graph if s in stages]

    def plan(self) -> Dict[str, Dict[str, Any]]:
        """Fingerprints for every stage; checks that requested stages have their inputs.

        Raises:
            UpstreamMissing: naming the stage to run first and the command to do it.
        """
        fps = fingerprints(self.cfg, self.requested)  # the requested stages and what they are built from
        order = list(self.graph)

        def missing(stage: str, seen: set) -> List[str]:  # upstream stages neither requested nor stored
            out: List[str] = []
            for up in self.graph[stage].inputs:
                if up in seen or up in self.requested or self.store.is_complete(up, fps[up]["fingerprint"]):
                    continue
                seen.add(up)
                out += [up, *missing(up, seen)]
            return out

        for name in self.requested:
            absent = missing(name, set())
            if absent:
                need = [s for s in order if s in self.requested or s in absent]
                what = ", ".join(f"'{u}' (fingerprint {fps[u]['fingerprint']})" for u in order if u in absent)
                raise UpstreamMissing(
                    f"stage '{name}' needs the {what} artifact{'s' if len(absent) > 1 else ''} for this config, "
                    f"which {'are' if len(absent) > 1 else 'is'} not in the store {self.store}. "
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
            log.info("cvops · %s · run dir %s", self.cfg.project, self.run_dir)
            detail.info("store %s", self.store)
            for name, stage in self.graph.items():
                if name not in fps:  # neither requested nor upstream of a requested stage
                    continue
                fp = fps[name]["fingerprint"]
                if name not in self.requested:
                    users = [r for r in self.requested if name in self.graph[r].inputs]
                    art = self.store.get(name, fp) if stage.cacheable and users else None
                    if art is not None:
                        done[name] = art
                        self._cached(art, time.perf_counter(), f"pulled in from the store as input of {', '.join(users)}")
                    continue
                why = next((f"input '{u}' {blocked[u]}" for u in stage.inputs if u in blocked), None)
                if why:
                    self._skip(name, fp, why)
                    blocked[name] = "was not built"
                    continue
                cached = self.store.get(name, fp) if stage.cacheable else None
                if cached is not None:  # a stored artifact needs no code: the stage's module is not even imported
                    done[name] = cached
                    self._cached(cached, time.perf_counter(), "in the store")
                    continue
                fn = implementation(name)
                if fn is None:
                    why = f"the {name} stage is not implemented in this cvops version yet (issue #{stage.issue})"
                    self._skip(name, fp, why)
                    blocked[name] = "is not implemented yet"
                    continue
                art = self._run_stage(stage, fp, fps[name], fn, done)
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

    def _context(self, stage: Stage, fp: str, workdir: Path, done: Dict[str, Artifact], resuming: bool,
                 info: Dict[str, Any]) -> StageContext:
        from cvops.track import StageTracker

        inputs = {u: done[u] for u in stage.inputs}
        tracker = StageTracker(self.cfg.tracker, workdir, stage.name, fp, to_container(self.cfg), str(self.cfg.project))
        return StageContext(stage.name, typed_view(stage.name, self.cfg, stage.sections), workdir, inputs, fp,
                            self.store, tracker, self.run_dir, resuming, code=info.get("code", ""),
                            external=info.get("external", ""))

    def _call(self, fn: StageFn, ctx: StageContext, t0: float) -> StageResult:
        for h in self.hooks:
            h.before_stage(ctx)
        try:
            result = fn(ctx)
            if not isinstance(result, StageResult):
                raise TypeError(f"stage '{ctx.name}' returned {type(result).__name__}, not a StageResult")
        except BaseException as e:
            for h in self.hooks:
                try:
                    h.on_failure(ctx, e)
                except Exception as he:  # a hook must not hide the stage's own error
                    log.warning("  %-9s hook %s failed: %s", ctx.name, type(h).__name__, he)
            self._failed(ctx.name, ctx.fingerprint, t0, e)
            raise
        return result

    def _after(self, ctx: StageContext, art: Optional[Artifact], result: StageResult) -> None:
        for h in self.hooks:
            try:
                h.after_stage(ctx, art, result)
            except Exception as e:  # the artifact is committed: a report or tracker problem is a warning
                log.warning("  %-9s hook %s failed: %s", ctx.name, type(h).__name__, e)

    def _run_stage(self, stage: Stage, fp: str, info: Dict[str, Any], fn: StageFn,
                   done: Dict[str, Artifact]) -> Optional[Artifact]:
        name = stage.name
        t0 = time.perf_counter()
        if not stage.cacheable:
            workdir = self.run_dir / name
            workdir.mkdir(parents=True, exist_ok=True)
            ctx = self._context(stage, fp, workdir, done, False, info)
            result = self._call(fn, ctx, t0)
            secs = time.perf_counter() - t0
            self.manifest.stage(name, status="ran", fingerprint=fp, seconds=secs,
                                artifacts={k: str(workdir / v) for k, v in result.artifacts.items()}, metrics=result.metrics)
            self._after(ctx, None, result)
            self._done_line(name, "ran", secs, result.metrics)
            return None

        existing = self.store.get(name, fp)
        if existing is not None:
            self._cached(existing, t0, "in the store")
            return existing
        keep = bool(OmegaConf.select(self.cfg, stage.resume_key)) if stage.resume_key else False

        def waiting(d: Path) -> None:
            log.info("  %-9s waiting  for another run building it (%s)", name, d)

        with self.store.build(name, fp, timeout=float(self.cfg.lock_timeout_s), keep_partial=keep, on_wait=waiting) as builder:
            if builder is None:  # a concurrent run finished it while we waited
                art = self.store.get(name, fp)
                assert art is not None
                self._cached(art, t0, "built by a concurrent run")
                return art
            log.info("  %-9s running  fp %s", name, fp)
            detail.info("%s: building %s", name, builder.dir)
            resuming = keep and any(builder.dir.iterdir())
            ctx = self._context(stage, fp, builder.dir, done, resuming, info)
            result = self._call(fn, ctx, t0)
            secs = time.perf_counter() - t0
            try:
                changed = code_changed(stage, fn, info["code"])
                if changed:  # an artifact is only ever stored under the code that built it
                    raise StaleCode(f"stage '{name}' was not cached: {changed}. Run the command again")
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
                    "reports": list(result.reports),
                    **({"skipped": result.skipped} if result.skipped else {}),
                })
            except BaseException as e:
                self._failed(name, fp, t0, e)
                raise
        self._after(ctx, art, result)
        if result.skipped:
            self.manifest.stage(name, status="skipped", fingerprint=fp, seconds=secs, artifacts=self._abs(art),
                                metrics=art.metrics, reason=result.skipped)
            self._done_line(name, "skipped", secs, art.metrics, f"partly: {result.skipped}")
            detail.info("%s: fp %s -> %s", name, fp, art.dir)
            return art
        self.manifest.stage(name, status="ran", fingerprint=fp, seconds=secs,
                            artifacts=self._abs(art), metrics=art.metrics)
        self._done_line(name, "ran", secs, art.metrics)
        detail.info("%s: fp %s -> %s", name, fp, art.dir)
        return art

    def _cached(self, art: Artifact, t0: float, why: str) -> None:
        for h in self.hooks:
            try:
                h.on_cached(art, self.run_dir)
            except Exception as e:
                log.warning("  %-9s hook %s failed: %s", art.stage, type(h).__name__, e)
        secs = time.perf_counter() - t0
        if art.manifest.get("skipped"):  # still partly skipped: say so again, from the cache
            self.manifest.stage(art.stage, status="skipped", fingerprint=art.fingerprint, seconds=secs,
                                artifacts=self._abs(art), metrics=art.metrics,
                                reason=f"{art.manifest['skipped']} (cached: {why})")
            self._done_line(art.stage, "skipped", secs, art.metrics, f"cached, partly: {art.manifest['skipped']}")
            detail.info("%s: fp %s -> %s", art.stage, art.fingerprint, art.dir)
            return
        self.manifest.stage(art.stage, status="cached", fingerprint=art.fingerprint, seconds=secs,
                            artifacts=self._abs(art), metrics=art.metrics,
                            reason=f"{why} (built {art.manifest.get('created', '?')} by {art.manifest.get('run_dir', '?')})")
        self._done_line(art.stage, "cached", secs, art.metrics)
        detail.info("%s: cached, fp %s %s -> %s", art.stage, art.fingerprint, why, art.dir)

    def _done_line(self, name: str, status: str, secs: float, metrics: Optional[Dict[str, Any]],
                   note: str = "") -> None:
        from cvops.summary import headline, seconds

        text = "; ".join(t for t in (headline(self.graph.get(name), metrics), note) if t)
        log.info("  %-9s %-8s %11s  %s", name, status, seconds(secs), text)

    def write_report(self) -> Optional[Path]:
        """``<run dir>/report.html`` (:mod:`cvops.report`), from ``run.json`` and the stages' reports."""
        from cvops.report import write

        return write(self.run_dir, self.graph)

    def summary(self) -> List[str]:
        """The closing summary of this run (printed by ``cvops`` at the end): a table of every stage's
        status and headline, then the next commands to try."""
        from cvops.summary import closing, command_args

        return closing(self.manifest.data, self.graph, command_args(self.recipe, self.manifest.data.get("overrides", [])),
                       self.run_dir)

    def _failed(self, name: str, fp: str, t0: float, e: BaseException) -> None:
        reason = f"{type(e).__name__}: {e}"
        self.manifest.stage(name, status="failed", fingerprint=fp, seconds=time.perf_counter() - t0, reason=reason)
        log.error("  %-9s FAILED   %s", name, reason)

    @staticmethod
    def _abs(art: Artifact) -> Dict[str, str]:
        return {"dir": str(art.dir), **{k: str(art.dir / v) for k, v in art.manifest.get("artifacts", {}).items()}}


__all__ = ["Runner", "Hooks", "TrackerHook", "ReportsHook", "default_hooks", "StageContext", "StageResult", "Stage",
           "ORDER", "register_stage", "implementation", "fingerprints", "UpstreamMissing", "StaleCode", "StoreError"]
