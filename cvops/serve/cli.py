"""``cvops serve recipe=X``: the HTTP endpoint on the recipe's exported model.

::

    cvops serve recipe=bccd                      # http://127.0.0.1:8000 (serve.host / serve.port)
    cvops serve recipe=bccd serve.port=9000 --workers 2
    curl -F image=@cell.jpg localhost:8000/v1/predict

It serves the export artifact of the recipe as configured now (its
fingerprint in the store; if it is not built, it says which stages to run),
logs requests to ``serve.log_dir`` (default ``<store>/requests/<project>``,
where ``cvops recipe=X stages=[monitor]`` reads them) and keeps live drift
gauges against the model's reference profile on ``/metrics``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, List, Optional


def serve_export(config: Any, store_root: Any, export: Any, curate: Optional[Any], recipe: Optional[str],
                 train_fp: Optional[str], workers: int = 1) -> None:
    """Serve an export artifact until interrupted (``cvops serve`` and ``stages=[..., serve]``).

    ``config``: the serve stage's typed view (``project``, ``model.name``, ``serve``, ``monitor``; see
    :func:`cvops.stages.typed_view`); ``store_root``: the artifact store (reference profiles, request log).

    Raises:
        ConfigError: ``serve.backend`` cannot be served here (named, with the alternative), or
            ``serve.host`` is not loopback without a token and ``serve.allow_anonymous`` is false.
    """
    from pathlib import Path

    from cvops.config import ConfigError
    from cvops.drift.gauges import DriftGauges
    from cvops.drift.profile import held_out, reference
    from cvops.requestlog import request_log_dir
    from cvops.serve.server import check_exposure, serve

    mon, sv = config.monitor, config.serve
    # before the reference profile is computed: a refused start says so at once
    check_exposure(sv.host, os.environ.get(sv.token_env) or None, sv.token_env, sv.allow_anonymous)
    drift: Optional[Callable[[List[dict]], Dict[str, float]]] = None
    if curate is not None:  # live drift gauges against the model's reference profile
        ref, _, _ = reference(Path(store_root), export.fingerprint, export.path("onnx"),
                              held_out(curate), mon.low_confidence)
        drift = DriftGauges(ref, mon.p_value, mon.psi_threshold, mon.mmd_permutations, mon.low_confidence)
    model = export.path("onnx")
    engine = None
    if sv.backend == "tensorrt":
        from cvops.detector.tensorrt import unavailable

        names = export.manifest.get("artifacts", {})
        why = unavailable() or (None if "engine" in names else
                                "the export has no engine (export with export=tensorrt_fp16 or tensorrt_int8)")
        if why:
            raise ConfigError(f"serve.backend=tensorrt: {why}; use serve.backend=onnxruntime")
        engine = export.path("engine")
        if "onnx_int8_trt" in names and "int8" in engine.name:
            model = export.path("onnx_int8_trt")
    elif sv.backend != "onnxruntime":
        raise ConfigError(f"serve.backend={sv.backend}: use onnxruntime or tensorrt")
    info = {"project": str(config.project), "recipe": recipe,
            "dataset_version": curate.metrics.get("dataset_version") if curate else None,
            "fingerprint": export.fingerprint, "train_fingerprint": train_fp,
            "model": str(config.model.name), "onnx": Path(model).name}  # a file name: /v1/model never shows a path
    serve(model, sv, info=info, log_dir=request_log_dir(sv.log_dir, store_root, config.project), drift=drift,
          workers=workers, drift_window=mon.drift_window, drift_every=mon.drift_every, engine_path=engine)


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(prog="cvops serve", description="Serve a recipe's exported model over HTTP.")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args, overrides = ap.parse_known_args(argv)
    from cvops.artifacts import ArtifactStore
    from cvops.config import ConfigError, compose_config, preflight
    from cvops.runner import fingerprints

    try:
        preflight(overrides)
        cfg = compose_config(overrides)
        fps = fingerprints(cfg)
        store = ArtifactStore(cfg.paths.store)
        export = store.get("export", fps["export"]["fingerprint"])
        if export is None:
            raise ConfigError(f"no exported model for this config (export {fps['export']['fingerprint']}) in "
                              f"{store.root}; build it first: cvops {' '.join(overrides)} stages=[curate,train,export]")
    except ConfigError as e:
        print(f"cvops: error: {e}", file=sys.stderr)
        return 2
    curate = store.get("curate", fps["curate"]["fingerprint"])
    recipe = next((o.split("=", 1)[1] for o in overrides if o.startswith("recipe=")), None)
    try:
        from cvops.stages import declared, typed_view

        view = typed_view("serve", cfg, declared()["serve"].sections)
        serve_export(view, cfg.paths.store, export, curate, recipe, fps["train"]["fingerprint"], workers=args.workers)
    except ConfigError as e:
        print(f"cvops: error: {e}", file=sys.stderr)
        return 2
    return 0
