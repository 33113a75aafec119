"""``cvops app``: open a recipe's curated dataset in the FiftyOne App.

::

    cvops app recipe=bccd                       # http://localhost:5151
    cvops app recipe=bccd --address 0.0.0.0 --port 5151   # reachable from other machines
    cvops app recipe=bccd --dataset bccd-481cebafda26     # a specific version
    cvops app recipe=bccd --review                        # the monitor's edge cases (<project>-review-<store>)
    cvops app recipe=bccd --all                           # every prediction, not the confident view

Which dataset and view open is decided by :mod:`cvops.fiftyone_app`. On a
remote machine, forward the port (``ssh -L 5151:localhost:5151 host``) or pass
``--address 0.0.0.0``.
"""

from __future__ import annotations

import argparse
from typing import List

from cvops.commands._prologue import guarded, parse_args
from cvops.session import open_recipe


def main(argv: List[str]) -> int:
    """``cvops app recipe=X [overrides] [--port N] [--address A] [--dataset D] [--all] [--review]``."""
    ap = argparse.ArgumentParser(prog="cvops app", description="Open a recipe's dataset in the FiftyOne App.")
    ap.add_argument("--port", type=int, default=5151)
    ap.add_argument("--address", default="localhost", help="bind address; 0.0.0.0 to serve other machines")
    ap.add_argument("--dataset", default=None, help="open this FiftyOne dataset instead")
    ap.add_argument("--all", action="store_true", help="open the whole dataset, not the confident-predictions view")
    ap.add_argument("--review", action="store_true",
                    help="open the monitor's review dataset of this store (monitor.review_dataset, default "
                    "<project>-review-<store>)")
    args, overrides = parse_args(ap, argv)
    return guarded(lambda: _app(args, overrides))


def _app(args: argparse.Namespace, overrides: List[str]) -> int:
    from cvops import fiftyone_app as app
    from cvops.annotate.review import review_dataset

    recipe = open_recipe(overrides)
    cfg = recipe.cfg
    dataset = args.dataset or (review_dataset(str(cfg.project), recipe.store.id, cfg.monitor.review_dataset)
                               if args.review else None)
    if dataset:
        name, why = app.named_dataset(dataset)
    else:
        found = app.curated_dataset(recipe.artifact("curate"), str(cfg.project), recipe.fingerprint("curate"))
        if found is None:  # nothing of this project in FiftyOne: say what builds it
            curate = recipe.require("curate")
            from cvops.errors import ConfigError
            from cvops.fo import identity

            raise ConfigError(f"the curate artifact's dataset '{curate.metrics.get('dataset_name')}' is not in the "
                              f"FiftyOne database cvops reached ({identity()}): is FIFTYONE_DATABASE_URI the one "
                              "that curate wrote to?")
        name, why = found
    saved = None if (args.all or dataset) else app.confident_view(recipe.artifact("evaluate"), name)
    session, ds, url = app.launch(name, saved, args.port, args.address)
    if saved:
        why += f"; view '{saved}' (every prediction: the dataset itself, or --all)"
    print(f"FiftyOne App: {url}  dataset {name} ({len(ds)} samples; {why}). Ctrl-C stops it.", flush=True)
    try:
        session.wait(-1)
    except KeyboardInterrupt:
        pass
    return 0
