"""``cvops review``: reviewed edge cases -> a new, immutable COCO source for curate.

::

    cvops review recipe=quickstart                  # -> <store>/../reviewed/quickstart/<version>/annotations.json
    cvops review recipe=quickstart --out /data/reviewed

Writes the samples of the recipe's review dataset tagged ``reviewed`` as a COCO
file (:func:`cvops.annotate.review.export_reviewed`) and prints the command that
curates the next dataset version with them added (``data.extra``).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import List

from cvops.commands._prologue import guarded, parse_args
from cvops.session import open_recipe


def main(argv: List[str]) -> int:
    """``cvops review recipe=X [overrides] [--out DIR]``; returns the exit status."""
    ap = argparse.ArgumentParser(prog="cvops review",
                                 description="Export reviewed edge cases as a COCO source for the next curate.")
    ap.add_argument("--out", type=Path, default=None,
                    help="parent folder of the version folders (default: <paths.store>/../reviewed/<project>)")
    args, overrides = parse_args(ap, argv)
    return guarded(lambda: _review(args.out, overrides))


def _review(out: Path, overrides: List[str]) -> int:
    from omegaconf import OmegaConf

    from cvops.annotate.review import curate_overrides, export_reviewed, review_dataset, write_quarantine
    from cvops.summary import program

    recipe = open_recipe(overrides)
    cfg = recipe.cfg
    dataset = review_dataset(str(cfg.project), recipe.store.id, cfg.monitor.review_dataset)
    out_root = out or Path(cfg.paths.store).expanduser().absolute().parent / "reviewed" / str(cfg.project)
    out_root = Path(out_root).expanduser().absolute()
    classes = list(cfg.data.classes) if cfg.data.classes else None
    res = export_reviewed(dataset, out_root, classes, confidence=float(cfg.confidence),
                          duplicate_iou=float(cfg.annotate.duplicate_iou))
    extra = OmegaConf.to_container(cfg.data.extra, resolve=True) or []
    masks = f" ({res['masks']} with an instance mask)" if res["masks"] else ""
    print(f"cvops review: {res['images']} reviewed image(s), {res['boxes']} box(es){masks} from FiftyOne dataset "
          f"'{dataset}' ({res['from_ground_truth']} labelled in ground_truth, {res['from_prelabels']} with "
          f"the confident prelabels accepted, at confidence >= {cfg.confidence})")
    state = "new version" if res["new"] else "unchanged since the last export: same version"
    print(f"  -> {res['path']} ({state} {res['version']})")
    if res["quarantined"]:
        rows = res["quarantined"]
        where = write_quarantine(Path(res["path"]).parent, rows)
        print(f"  refused {len(rows)} reviewed sample(s) whose labels cannot be ground truth (fix them and export "
              f"again; the rows: {where}):")
        for row in rows[:10]:
            print(f"    {row['file']} ({row['field']}): {'; '.join(row['reasons'])}")
        if len(rows) > 10:
            print(f"    ... and {len(rows) - 10} more")
    if res["skipped_invalid_boxes"]:
        print(f"  left out {res['skipped_invalid_boxes']} detection(s) without a bounding box")
    if res["skipped_missing_files"]:
        print(f"  left out {len(res['skipped_missing_files'])} sample(s) whose image file is gone, e.g. "
              f"{res['skipped_missing_files'][0]}")
    print("Next: curate them into a new dataset version (add stages=[curate] to stop after curate):")
    line = curate_overrides(overrides, extra, res["path"], out_root)
    print(f"  {' '.join([program(), *(shlex.quote(a) for a in line)])}")
    return 0
