"""``stages=[..., serve]``: serve the export just built or reused, until interrupted.

The same as ``cvops serve recipe=X`` (:func:`serve_export` serves for both), for
recipes that end in a running endpoint. Not cached: a server is a process, not an
artifact; ``run.json`` records when it stopped.

It serves the export artifact of the recipe as configured now, logs requests
to ``serve.log_dir`` (default ``<store>/requests/<project>``, where
``cvops recipe=X stages=[monitor]`` reads them) and keeps live drift gauges
against the model's reference profile on ``/metrics``.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from cvops.stages import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    """Serve the export (``ctx.inputs["export"]``) until interrupted; drift gauges against curate's held-out data."""
    from hydra.core.hydra_config import HydraConfig

    try:
        recipe = HydraConfig.get().runtime.choices.get("recipe")
    except ValueError:  # not under Hydra (a Runner called directly, as tests do)
        recipe = None
    serve_export(ctx.config, ctx.store, ctx.inputs["export"], ctx.inputs["curate"], recipe)
    return StageResult({}, {"stopped": True})


def serve_export(config: Any, store: Any, export: Any, curate: Optional[Any], recipe: Optional[str],
                 workers: int = 1) -> None:
    """Serve an export artifact until interrupted (``cvops serve`` and ``stages=[..., serve]``).

    ``config``: the serve stage's typed view (``project``, ``model.name``, ``serve``, ``monitor``; see
    :func:`cvops.stages.typed_view`); ``store``: the artifact store (:func:`cvops.store.open_store`; a folder
    path is one too), whose machine-local side keeps the reference profiles and the request log.
    With ``serve.alias`` set, ``export`` and ``curate`` are not used: the alias's export is served, and
    followed (:mod:`cvops.serve.models`).

    Raises:
        ConfigError: ``serve.backend`` cannot be served here (named, with the alternative), or
            ``serve.host`` is not loopback without a token and ``serve.allow_anonymous`` is false.
    """
    from cvops.store import open_store, store_spec
    from cvops.requestlog import request_log_dir
    from cvops.serve.models import ExportSource
    from cvops.serve.limits import check as check_limits
    from cvops.serve.server import check_exposure, serve

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
          drift_window=mon.drift_window, drift_every=mon.drift_every, engine_path=engine,
          source=source if sv.shadow_alias else None)
