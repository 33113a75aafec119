"""``cvops app``: open a recipe's curated dataset in the FiftyOne App.

::

    cvops app recipe=bccd                       # http://localhost:5151
    cvops app recipe=bccd --address 0.0.0.0 --port 5151   # reachable from other machines
    cvops app recipe=bccd --dataset bccd-481cebafda26     # a specific version
    cvops app recipe=bccd --review                        # the monitor's edge cases (<project>-review)
    cvops app recipe=bccd --all                           # every prediction, not the confident view

It opens the dataset curated for the recipe as configured now (the curate
artifact of the current config); if that was not built yet, the project's most
recently created dataset, and says so. When the evaluate stage ran for this
config, the App opens its saved view: predictions down to the confusion
threshold (``evaluate.confusion_score_thr``) only, since the stored ones go
down to ``evaluate.score_thr`` for mAP and would bury each image in faint
boxes; the whole dataset is one click away (the view bar's saved-view menu, or
``--all``).

On a remote machine, forward the port
(``ssh -L 5151:localhost:5151 host``) or pass ``--address 0.0.0.0``.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from typing import List, Optional


def confident_view(overrides: List[str], dataset: str) -> Optional[str]:
    """The evaluate stage's saved view for this config (its artifact's ``app_view``), if built and on ``dataset``."""
    from cvops.artifacts import open_store
    from cvops.config import compose_config
    from cvops.fo import connect
    from cvops.runner import fingerprints

    cfg = compose_config(overrides)
    fp = fingerprints(cfg)["evaluate"]["fingerprint"]
    art = open_store(cfg.paths).get("evaluate", fp)
    name = art.metrics.get("app_view") if art is not None else None
    if name and name in connect().load_dataset(dataset).list_saved_views():
        return str(name)
    return None


def resolve_dataset(overrides: List[str], dataset: Optional[str] = None) -> tuple:
    """(dataset name, how it was chosen) for a recipe command line."""
    from cvops.artifacts import open_store
    from cvops.config import compose_config, preflight
    from cvops.fo import connect
    from cvops.runner import fingerprints

    fo = connect()
    if dataset:
        if not fo.dataset_exists(dataset):
            raise SystemExit(f"cvops app: no FiftyOne dataset '{dataset}'; have: {', '.join(fo.list_datasets())}")
        return dataset, "as asked"
    preflight(overrides)
    cfg = compose_config(overrides)
    fp = fingerprints(cfg)["curate"]["fingerprint"]
    art = open_store(cfg.paths).get("curate", fp)
    if art is not None and fo.dataset_exists(art.metrics.get("dataset_name", "")):
        return art.metrics["dataset_name"], f"curated for this config (curate {fp})"
    project = str(cfg.project)
    mine = [d for d in fo.list_datasets(info=True) if d["name"].startswith(f"{project}-")]
    if not mine:
        raise SystemExit(f"cvops app: project '{project}' has no curated dataset yet; "
                         f"run: cvops {' '.join(overrides)} stages=[curate]")
    latest = max(mine, key=lambda d: d.get("created_at") or 0)
    return latest["name"], f"latest of project '{project}' (this config's curate {fp} is not built yet)"


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(prog="cvops app", description="Open a recipe's dataset in the FiftyOne App.")
    ap.add_argument("--port", type=int, default=5151)
    ap.add_argument("--address", default="localhost", help="bind address; 0.0.0.0 to serve other machines")
    ap.add_argument("--dataset", default=None, help="open this FiftyOne dataset instead")
    ap.add_argument("--all", action="store_true", help="open the whole dataset, not the confident-predictions view")
    ap.add_argument("--review", action="store_true",
                    help="open the monitor's review dataset (monitor.review_dataset, default <project>-review)")
    args, overrides = ap.parse_known_args(argv)
    from cvops.config import ConfigError

    try:
        if args.review and not args.dataset:
            from cvops.config import compose_config, preflight

            preflight(overrides)
            cfg = compose_config(overrides)
            args.dataset = cfg.monitor.review_dataset or f"{cfg.project}-review"
        name, why = resolve_dataset(overrides, args.dataset)
    except ConfigError as e:
        print(f"cvops: error: {e}", file=sys.stderr)
        return 2
    from cvops.fo import connect

    fo = connect()
    ds = fo.load_dataset(name)
    saved = None if (args.all or args.review or args.dataset) else confident_view(overrides, name)
    view = ds.load_saved_view(saved) if saved else None
    session = fo.launch_app(ds, view=view, port=args.port, address=args.address, remote=True, auto=False)
    host = "localhost" if args.address in ("0.0.0.0", "::") else args.address
    # the dataset's own URL: it opens that dataset whatever the session state (with FIFTYONE_DATABASE_URI the
    # App's root page shows "No dataset selected"); a saved view by its slug
    url = f"http://{host}:{args.port}/datasets/{urllib.parse.quote(name)}"
    if saved:
        from fiftyone.core.utils import to_slug

        url += f"?view={urllib.parse.quote(to_slug(saved))}"
        why += f"; view '{saved}' (every prediction: the dataset itself, or --all)"
    print(f"FiftyOne App: {url}  dataset {name} ({len(ds)} samples; {why}). Ctrl-C stops it.", flush=True)
    try:
        session.wait(-1)
    except KeyboardInterrupt:
        pass
    return 0
