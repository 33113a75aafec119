"""The label-free precision estimate against the truth: the quickstart's export on generated windows with
known boxes, in distribution and shifted.

    .venv/bin/python benchmarks/precision_estimate.py [--images 120] [--out precision.json] [cvops overrides]

Builds (or reuses from its store) the quickstart's export, whose ``precision_calibration.json`` was fitted
on the validation split at export. Then, for each window (new generator seeds; the monitor's shift of
the quickstart, a darker one, and a noisier one on an unseen background), it runs the exported model with
ONNX Runtime as the server does, and compares the expected precision of the detections at the confidence
threshold (:class:`cvops.detector.calibration.Calibration`, what ``cvops_estimated_precision`` shows) with
their true precision at IoU 0.5. Goal (issue #29): within 0.1 on the in-distribution and shifted windows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WINDOWS = {  # name: (brightness, blur, noise, background)
    "in distribution": (1.0, 0.0, 0.0, None),
    "quickstart shift (darker, blurred)": (0.55, 1.5, 0.0, None),
    "much darker": (0.3, 0.0, 0.0, None),
    "noisy, unseen background": (0.8, 0.0, 12.0, "checker"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=120, help="images per window")
    ap.add_argument("--store", type=Path, default=None, help="the artifact store (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=None)
    args, overrides = ap.parse_known_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="cvops-precision-")) / "store"
    line = ["recipe=quickstart", "tracker=none", f"paths.store={store}", *overrides]
    subprocess.run([sys.executable, "-m", "cvops", *line, "stages=[curate,train,export]"], check=True)

    import cv2
    import numpy as np

    from cvops.detector.calibration import ALL, Calibration, match
    from cvops.detector.runtime import OnnxDetector
    from cvops.session import open_recipe
    from cvops.synthetic import Shift, SyntheticSpec, generate

    recipe = open_recipe(line)
    export = recipe.require("export")
    cal = Calibration.read(export.path("precision_calibration"))
    det = OnnxDetector(export.path("onnx"))
    syn = recipe.cfg.data.synthetic
    rows = []
    for k, (name, (bright, blur, noise, bg)) in enumerate(WINDOWS.items()):
        root = Path(tempfile.mkdtemp(prefix="cvops-window-"))
        spec = SyntheticSpec(num_images=args.images, image_size=tuple(syn.image_size), min_size=int(syn.min_size),
                             videos=0, seed=1000 + k, shift=Shift(brightness=bright, blur=blur, noise=noise, background=bg))
        generate(root, spec, progress=False)
        coco = json.loads((root / "annotations.json").read_text())
        ids = {c["name"]: c["id"] for c in coco["categories"]}
        truth = {}
        for a in coco["annotations"]:
            truth.setdefault(a["image_id"], []).append(a)
        served, hits = [], []
        for im in coco["images"]:
            d = det.predict([cv2.imread(str(root / im["file_name"]))])[0]
            js = [x for x in d.to_json(det.classes) if x["score"] >= cal.confidence]
            served += js
            res = [{"category_id": ids.get(x["class"], -1), "score": x["score"],
                    "bbox": [x["box"][0], x["box"][1], x["box"][2] - x["box"][0], x["box"][3] - x["box"][1]]} for x in js]
            hits += match(res, truth.get(im["id"], []))
        est = cal.estimate(served).get(ALL, {}).get("precision")
        true = float(np.mean(hits)) if hits else None
        err = None if est is None or true is None else est - true
        rows.append({"window": name, "images": args.images, "boxes": len(hits), "estimated": est, "true": true,
                     "error": err})
        print(f"{name:38s} {len(hits):5d} boxes  estimated {est if est is None else round(est, 3)}  true "
              f"{true if true is None else round(true, 3)}  error {err if err is None else f'{err:+.3f}'}", flush=True)
    out = {"reference": cal.reference.get(ALL), "calibrated_on": cal.data.get("split"),
           "calibration_boxes": cal.data.get("boxes", {}).get(ALL), "windows": rows}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    worst = max((abs(r["error"]) for r in rows if r["error"] is not None), default=None)
    print(f"validation split precision {out['reference']}; worst |error| {worst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
