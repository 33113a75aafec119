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
from typing import Any, List, Optional


def serve_export(config: Any, store: Any, export: Any, curate: Optional[Any], recipe: Optional[str],
                 workers: int = 1) -> None:
    """Serve an export artifact until interrupted (``cvops serve`` and ``stages=[..., serve]``).

    ``config``: the serve stage's typed view (``project``, ``model.name``, ``serve``, ``monitor``; see
    :func:`cvops.stages.typed_view`); ``store``: the artifact store (:func:`cvops.artifacts.open_store`; a folder
    path is one too), whose machine-local side keeps the reference profiles and the request log.
    With ``serve.alias`` set, ``export`` and ``curate`` are not used: the alias's export is served, and
    followed (:mod:`cvops.serve.models`).

    Raises:
        ConfigError: ``serve.backend`` cannot be served here (named, with the alternative), or
            ``serve.host`` is not loopback without a token and ``serve.allow_anonymous`` is false.
    """
    from cvops.artifacts import open_store, store_spec
    from cvops.requestlog import request_log_dir
    from cvops.serve.models import ExportSource
    from cvops.serve.server import check_exposure, check_limits, serve

    mon, sv = config.monitor, config.serve
    # before the reference profile is computed: a refused start says so at once
    check_limits(sv, workers)
    check_exposure(sv.host, os.environ.get(sv.token_env) or None, sv.token_env, sv.allow_anonymous)
    if isinstance(store, (str, os.PathLike)):
        store = open_store(store)
    store_root = store.root
    source = ExportSource(str(store_root), str(config.project), recipe, str(config.model.name),
                          backend=str(getattr(sv.backend, "value", sv.backend)), monitor=mon, alias=sv.alias,
                          store=store_spec(store))
    log_dir = request_log_dir(sv.log_dir, store_root, config.project)
    if sv.alias:  # the registry's export, followed (cvops.serve.models)
        serve(None, sv, log_dir=log_dir, workers=workers, drift_window=mon.drift_window,
              drift_every=mon.drift_every, source=source)
        return
    model, engine = source.files(export)
    drift = source.drift(export, curate, model)  # live drift gauges against the model's reference profile
    serve(model, sv, info=source.info(export, curate, model), log_dir=log_dir, drift=drift, workers=workers,
          drift_window=mon.drift_window, drift_every=mon.drift_every, engine_path=engine)


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(prog="cvops serve", description="Serve a recipe's exported model over HTTP.")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args, overrides = ap.parse_known_args(argv)
    from cvops.artifacts import open_store
    from cvops.config import ConfigError, compose_config, preflight
    from cvops.runner import fingerprints

    try:
        preflight(overrides)
        cfg = compose_config(overrides)
        fps = fingerprints(cfg)
        store = open_store(cfg.paths)
        export = store.get("export", fps["export"]["fingerprint"])
        if export is None and not cfg.serve.alias:
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
        serve_export(view, store, export, curate, recipe, workers=args.workers)
    except ConfigError as e:
        print(f"cvops: error: {e}", file=sys.stderr)
        return 2
    return 0
