"""Which model a server answers with: one export artifact, or the one a registry alias points at now.

``cvops serve recipe=X`` serves the export the recipe resolves to.
``cvops serve recipe=X serve.alias=production`` follows the alias instead
(:mod:`cvops.store.registry`): every ``serve.alias_poll_s`` seconds, and at once on
``POST /v1/admin/reload``, it reads the alias; when it points at another
export, that export is loaded beside the one being served, warmed with one
inference, and only then switched to (:class:`cvops.serve.slots.ModelSlot`):
requests already in flight finish on the model they started on, the next
ones get the new model, and every answer's ``model`` names the export that
answered. A model that fails to load or warm never goes live; the server
keeps the previous one and says why in its log (once per export) and on
``/metrics`` (``cvops_errors_total{reason="model_load"}``).

Each uvicorn worker (``--workers N``) follows the alias itself, from the same
small file, so all workers switch within one poll interval of each other.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from cvops.schema import MonitorConfig

logger = logging.getLogger("cvops.serve")


@dataclass
class ExportSource:
    """How to turn an export fingerprint of a store into a served model (picklable: workers rebuild it).

    ``backend`` is ``onnxruntime`` or ``tensorrt``; ``monitor`` gives the drift
    gauges' settings (None: no drift gauges).
    """

    store_root: str  # this machine's side of the store; the store itself (drift references too): ``store``
    project: str
    recipe: Optional[str] = None
    model_name: Optional[str] = None
    backend: str = "onnxruntime"
    monitor: Optional[MonitorConfig] = None
    threads: Optional[int] = None
    alias: Optional[str] = None
    store: Optional[Dict[str, Any]] = None  # cvops.store.Store.spec() (None: the folder store at store_root)

    def open_store(self) -> Any:
        from cvops.store import FolderStore, open_store

        return open_store(self.store) if self.store else FolderStore(self.store_root)

    def files(self, export: Any) -> Tuple[Path, Optional[Path]]:
        """(the ONNX model, the TensorRT engine or None) of ``export`` for ``backend``.

        Raises:
            ConfigError: ``backend`` cannot serve this export here (named, with the alternative).
        """
        from cvops.errors import ConfigError

        model = export.path("onnx")
        if self.backend == "tensorrt":
            from cvops.detector.tensorrt import unavailable

            names = export.manifest.get("artifacts", {})
            why = unavailable() or (None if "engine" in names else
                                    "the export has no engine (export with export=tensorrt_fp16 or tensorrt_int8)")
            if why:
                raise ConfigError(f"serve.backend=tensorrt: {why}; use serve.backend=onnxruntime")
            engine = export.path("engine")
            if "onnx_int8_trt" in names and "int8" in engine.name:
                model = export.path("onnx_int8_trt")
            return model, engine
        if self.backend != "onnxruntime":
            raise ConfigError(f"serve.backend={self.backend}: use onnxruntime or tensorrt")
        return model, None

    def info(self, export: Any, curate: Any, model_file: Path) -> Dict[str, Any]:
        """What ``/v1/model`` says about ``export`` (names and fingerprints; never a path)."""
        inputs = export.manifest.get("inputs", {})
        out = {"project": self.project, "recipe": self.recipe,
               "dataset_version": curate.metrics.get("dataset_version") if curate is not None else None,
               "fingerprint": export.fingerprint, "train_fingerprint": inputs.get("train"),
               "model": self.model_name, "onnx": Path(model_file).name}
        if self.alias:
            out["alias"] = self.alias
        return out

    def drift(self, export: Any, curate: Any, model_file: Path) -> Optional[Callable]:
        """The live drift check against ``export``'s reference profile (None without curate or monitor)."""
        if curate is None or self.monitor is None:
            return None
        from cvops.drift.gauges import DriftGauges
        from cvops.drift.profile import held_out, reference

        mon = self.monitor
        ref, _, _ = reference(self.open_store(), export.fingerprint, model_file, held_out(curate),
                              mon.low_confidence)
        cal = None
        if "precision_calibration" in export.manifest.get("artifacts", {}):
            import json

            cal = json.loads(export.path("precision_calibration").read_text(encoding="utf-8"))
        return DriftGauges(ref, mon.p_value, mon.psi_threshold, mon.mmd_permutations, mon.low_confidence, cal)

    def load(self, fingerprint: str) -> Tuple[Any, Dict[str, Any], Optional[Callable]]:
        """(detector, info, drift check) of the export ``fingerprint``.

        Raises:
            LookupError: the store has no complete export with that fingerprint.
        """
        import re

        if not re.fullmatch(r"[0-9a-f]{8,64}", str(fingerprint)):
            raise LookupError(f"{str(fingerprint)[:80]!r} is not an export fingerprint")
        store = self.open_store()
        export = store.get("export", fingerprint)
        if export is None:
            raise LookupError(f"export {fingerprint} is not in the store {store} (deleted, or the alias "
                              "was promoted from another store)")
        curate_fp = export.manifest.get("inputs", {}).get("curate")
        curate = store.get("curate", curate_fp) if curate_fp else None
        model, engine = self.files(export)
        detector = open_detector(model, engine, self.threads)
        return detector, self.info(export, curate, model), self.drift(export, curate, model)


def open_detector(model: Path, engine: Optional[Path] = None, threads: Optional[int] = None) -> Any:
    """The runtime of an exported model: ONNX Runtime, or TensorRT when an engine is given."""
    if engine is not None:
        from cvops.detector.tensorrt import EngineDetector

        return EngineDetector(Path(engine), Path(model))
    from cvops.detector.runtime import OnnxDetector

    return OnnxDetector(model, threads=threads, spin=False)  # its threads must not spin on the request threads' cores


class AliasFollower:
    """Keeps an application on the export a registry alias points at (see the module docstring).

    Args:
        source: loads an export (:class:`ExportSource`; its ``alias`` is the one followed).
        load: the application's ``app.state.load(detector, info, drift)`` (warms, then swaps).
        poll_s: seconds between two reads of the alias.
    """

    def __init__(self, source: ExportSource, load: Callable[..., Any], poll_s: float) -> None:
        from cvops.store.registry import Registry

        if not source.alias:
            raise ValueError("AliasFollower needs source.alias")
        self.source, self.load_into, self.poll_s = source, load, max(0.05, float(poll_s))
        self.registry = Registry(source.open_store(), source.project)
        self.serving: Optional[str] = None
        self.wanted: Optional[str] = None  # the export the alias named at the last read
        self._failed: Dict[str, str] = {}  # export -> why it could not be loaded (said once)
        self._lock = threading.Lock()  # one check at a time (poll thread and /v1/admin/reload)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.on_error: Optional[Callable[[str], None]] = None

    def _fail(self, key: str, why: str, what: str) -> RuntimeError:
        if self._failed.get(key) != why:  # said once per target and reason
            logger.error("alias %s: %s (%s); still serving %s", self.source.alias, what, why, self.serving or "nothing")
            self._failed[key] = why
            if self.on_error is not None:
                self.on_error(why)
        return RuntimeError(f"{what}: {why}")

    def check(self, force: bool = False) -> Dict[str, Any]:
        """Read the alias; switch to its export if it changed. Returns what ``/v1/admin/reload`` answers.

        An export that failed to load is not tried again by the poll (``force``: by ``/v1/admin/reload``),
        so a broken promotion costs one load, not one per poll.

        Raises:
            RuntimeError: the alias cannot be read, or points at an export that cannot be loaded (the
                previous model stays).
        """
        with self._lock:
            try:
                target = self.registry.resolve(str(self.source.alias))
            except (OSError, ValueError) as e:  # RegistryError is a ValueError
                raise self._fail("<alias>", f"{type(e).__name__}: {e}", "cannot read the alias") from e
            self._failed.pop("<alias>", None)
            self.wanted = target
            if target is None or target == self.serving:
                return {"alias": self.source.alias, "export": self.serving, "changed": False,
                        **({} if target else {"note": f"alias {self.source.alias} is not set"})}
            if target in self._failed and not force:
                raise RuntimeError(f"export {target} cannot be served: {self._failed[target]}")
            previous = self.serving
            try:
                detector, info, drift = self.source.load(target)
                self.load_into(detector, info, drift)
            except Exception as e:
                raise self._fail(target, f"{type(e).__name__}: {e}", f"export {target} cannot be served") from e
            self.serving = target
            self._failed.pop(target, None)
            logger.info("alias %s -> export %s (was %s)", self.source.alias, target, previous or "nothing")
            return {"alias": self.source.alias, "export": target, "previous": previous, "changed": True}

    def stale(self) -> Optional[Dict[str, Any]]:
        """What the alias names and why this server does not serve it, or None (it does, or is switching).

        ``/readyz`` answers 503 and ``/v1/model`` says so while this is set: the alias moved to an export
        that could not be loaded (gone from the store, broken), and the previous model is still served.
        """
        wanted = self.wanted
        if wanted is None or wanted == self.serving or wanted not in self._failed:
            return None
        return {"alias": self.source.alias, "alias_export": wanted, "serving": self.serving,
                "reason": self._failed[wanted]}

    def start(self) -> "AliasFollower":
        """Poll in a background thread (daemon) until :meth:`stop`."""

        def loop() -> None:
            while not self._stop.wait(self.poll_s):
                try:
                    self.check()
                except Exception:  # said in check(); the previous model keeps serving
                    pass

        self._thread = threading.Thread(target=loop, name="cvops-alias", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


__all__ = ["ExportSource", "AliasFollower", "open_detector"]
