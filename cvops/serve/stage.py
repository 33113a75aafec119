"""``stages=[..., serve]``: serve the export just built or reused, until interrupted.

The same as ``cvops serve recipe=X`` (see :mod:`cvops.serve.cli`), for recipes
that end in a running endpoint. Not cached: a server is a process, not an
artifact; ``run.json`` records when it stopped.
"""

from __future__ import annotations

from cvops.stages import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    """Serve the export (``ctx.inputs["export"]``) until interrupted; drift gauges against curate's held-out data."""
    from hydra.core.hydra_config import HydraConfig

    from cvops.serve.cli import serve_export

    try:
        recipe = HydraConfig.get().runtime.choices.get("recipe")
    except ValueError:  # not under Hydra (tests, the Python API)
        recipe = None
    serve_export(ctx.config, ctx.store, ctx.inputs["export"], ctx.inputs["curate"], recipe)
    return StageResult({}, {"stopped": True})
