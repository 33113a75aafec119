"""``cvops annotate``: prepare the store's review batch for people, in the FiftyOne App or Label Studio.

::

    cvops annotate recipe=quickstart                       # the App: label schema + prelabels, then
    cvops app recipe=quickstart --review                   #   edit in the Annotate panel, tag 'reviewed'
    cvops annotate recipe=quickstart annotate.backend=labelstudio          # push new samples to Label Studio
    cvops annotate recipe=quickstart annotate.backend=labelstudio --load   # pull finished tasks back
    cvops review recipe=quickstart                         # reviewed samples -> the next dataset version

Works on the review dataset of the recipe's store (:func:`cvops.annotate.review.review_dataset`).
Each push and load leaves a report (``outputs/<project>/annotate/<time>-<action>.json``): pushed,
finished, skipped, conflicts, quarantined, per annotator.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List

from cvops.commands._prologue import guarded, parse_args
from cvops.session import open_recipe


def main(argv: List[str]) -> int:
    """``cvops annotate recipe=X [overrides] [--load]``; returns the exit status."""
    ap = argparse.ArgumentParser(prog="cvops annotate",
                                 description="Prepare the review batch for people (annotate.backend: app | "
                                             "labelstudio), or load finished Label Studio tasks back (--load).")
    ap.add_argument("--load", action="store_true", help="pull finished annotations from Label Studio into the "
                    "review dataset (tags them 'reviewed'; skipped tasks 'rejected')")
    ap.add_argument("--report", type=Path, default=None,
                    help="write the batch report here (default: outputs/<project>/annotate/<time>-<action>.json)")
    args, overrides = parse_args(ap, argv)
    return guarded(lambda: _annotate(args, overrides))


def _annotate(args: argparse.Namespace, overrides: List[str]) -> int:
    from cvops.annotate.review import review_dataset

    recipe = open_recipe(overrides)
    cfg = recipe.cfg
    an = cfg.annotate
    dataset = review_dataset(str(cfg.project), recipe.store.id, cfg.monitor.review_dataset)
    classes = _classes(recipe)
    masks = bool(cfg.model.masks)
    common = dict(masks=masks, duplicate_iou=float(an.duplicate_iou))
    if str(an.backend) == "app":
        if args.load:
            print("cvops annotate: annotate.backend=app writes into FiftyOne as people edit: nothing to load. Tag "
                  "the finished samples 'reviewed' in the App, then run cvops review.")
            return 0
        from cvops.annotate.app import prepare

        res = prepare(dataset, classes, confidence=float(cfg.confidence), max_samples=int(an.max_samples), **common)
        res["action"], res["backend"] = "prepare", "app"
        print(f"cvops annotate: FiftyOne dataset '{dataset}' ready for the App's Annotate panel: field "
              f"'{res['field']}' ({'outlines, one polyline per instance' if masks else 'boxes'}) with the classes "
              f"{', '.join(classes)}; {res['filled']} sample(s) filled from the prelabels at confidence >= "
              f"{cfg.confidence}, {res['kept']} already labelled by a person, {res['done']} done "
              f"(reviewed/rejected) of {res['samples']}")
        print("Next: open it, correct the labels in the Annotate panel, tag each finished sample 'reviewed' "
              "('rejected' leaves it out), then export:")
        print(f"  cvops app {' '.join(overrides)} --review")
        print(f"  cvops review {' '.join(overrides)}")
    else:
        from cvops.annotate import labelstudio as ls

        conn = dict(url=str(an.url), key_env=str(an.api_key_env), timeout=float(an.timeout_s))
        if args.load:
            res = ls.load(dataset, classes, **common, **conn)
            print(f"cvops annotate --load: Label Studio project {res['project']} at {res['url']} -> FiftyOne "
                  f"'{dataset}': {res['finished']} finished, {res['skipped']} skipped (tagged rejected), "
                  f"{res['quarantined']} quarantined, {res['conflicts']} conflict(s), {res['unfinished']} not "
                  f"annotated yet, {res['unchanged']} unchanged since the last load ({res['seconds']} s)")
            for who, c in sorted(res["per_annotator"].items()):
                print(f"  {who}: " + ", ".join(f"{v} {k}" for k, v in c.items() if v))
            for row in res["rows"]:
                print(f"  {row['kind']}: {row['file']} (task {row['task']}, {row['annotator']}): "
                      f"{'; '.join(row['reasons'])}")
            print(f"Next: cvops review {' '.join(overrides)}")
        else:
            res = ls.push(dataset, classes, confidence=float(cfg.confidence), max_samples=int(an.max_samples),
                          **common, **conn)
            for note in res["notes"]:
                print(f"cvops annotate: {note}")
            print(f"cvops annotate: {res['pushed']} new task(s) in Label Studio project {res['project']} at "
                  f"{res['url']} ({res['tasks']} in all; {res['recovered']} found from an earlier push, "
                  f"{res['waiting']} waiting for the next push; {res['seconds']} s)")
            print(f"  annotate them at {res['url']}/projects/{res['project']}/data, then load them back:")
            print(f"  cvops annotate {' '.join(overrides)} --load")
    path = _report(args.report, str(cfg.project), res)
    print(f"  report: {path}")
    return 0


def _classes(recipe: Any) -> List[str]:
    """The project's classes: the curated dataset's (what the model was trained on), else data.classes."""
    art = recipe.artifact("curate")
    if art is not None and art.metrics.get("classes"):
        return [str(c) for c in art.metrics["classes"]]
    if recipe.cfg.data.classes:
        return [str(c) for c in recipe.cfg.data.classes]
    from cvops.errors import ConfigError

    raise ConfigError("the project's classes are not known: curate it first (stages=[curate]) or set data.classes")


def _report(path: Any, project: str, res: Dict[str, Any]) -> Path:
    from cvops.store.base import write_json_atomic

    if path is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = Path("outputs") / project / "annotate" / f"{stamp}-{res['action']}.json"
    path = Path(path).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, json.loads(json.dumps(res, default=str)), durable=False)
    return path
