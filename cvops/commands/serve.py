"""``cvops serve recipe=X``: the HTTP endpoint on the recipe's exported model.

::

    cvops serve recipe=bccd                      # http://127.0.0.1:8000 (serve.host / serve.port)
    cvops serve recipe=bccd serve.port=9000 --workers 2
    curl -F image=@cell.jpg localhost:8000/v1/predict

It serves the export artifact of the recipe as configured now (its
fingerprint in the store; if it is not built, it says which stages to run),
or with ``serve.alias`` the registry's export, followed. The serving itself
is :func:`cvops.serve.stage.serve_export`, shared with ``stages=[..., serve]``.
"""

from __future__ import annotations

import argparse
from typing import List

from cvops.commands._prologue import guarded, parse_args
from cvops.session import open_recipe


def main(argv: List[str]) -> int:
    """``cvops serve recipe=X [overrides] [--workers N]``; returns the exit status."""
    ap = argparse.ArgumentParser(prog="cvops serve", description="Serve a recipe's exported model over HTTP.")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args, overrides = parse_args(ap, argv)
    return guarded(lambda: _serve(overrides, args.workers))


def _serve(overrides: List[str], workers: int) -> int:
    from cvops.serve.stage import serve_export

    recipe = open_recipe(overrides)
    view = recipe.view("serve")
    if view.serve.alias:  # the alias's export is served (and followed), not this config's
        export = curate = None
    else:
        export, curate = recipe.require("export"), recipe.artifact("curate")
    serve_export(view, recipe.store, export, curate, recipe.name, workers=workers)
    return 0
