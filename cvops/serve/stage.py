"""``stages=[..., serve]``: serve the export just built or reused, until interrupted.

The same as ``cvops serve recipe=X`` (see :mod:`cvops.serve.cli`), for recipes
that end in a running endpoint. Not cached: a server is a process, not an
artifact; ``run.json`` records when it stopped.
"""

from __future__ import annotations

from cvops.runner import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    from hydra.core.hydra_config import HydraConfig

    from cvops.artifacts import ArtifactStore
    from cvops.runner import fingerprints
    from cvops.serve.cli import serve_export

    fps = fingerprints(ctx.cfg)
    curate = ArtifactStore(ctx.cfg.paths.store).get("curate", fps["curate"]["fingerprint"])
    try:
        recipe = HydraConfig.get().runtime.choices.get("recipe")
    except ValueError:  # not under Hydra (tests, the Python API)
        recipe = None
    serve_export(ctx.cfg, ctx.inputs["export"], curate, recipe, fps["train"]["fingerprint"])
    return StageResult({}, {"stopped": True})
