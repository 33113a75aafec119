"""How equal are an exported mask model's masks to PyTorch's, and what did the old mask path cost?

    .venv/bin/python benchmarks/mask_parity.py <run dir or run.json> [...] [--out mask_parity.json]

For each run of an instance segmentation recipe (e.g. the runs of
``benchmarks/quickstart_robustness.py --recipe quickstart_seg``) that has an
export, on its gate split (test, else val):

* PyTorch: mmdet's ``predict()`` with the export's thresholds (the gate's
  reference);
* ``onnx`` / ``int8``: the exported graphs through cvops' runtime (mask logits
  taken to the image in logit space, as mmdet does);
* ``onnx_threshold_first`` / ``int8_threshold_first``: the same graphs' logits
  through the path cvops used before issue #31 (x8 bilinear, crop, sigmoid >
  0.5 at the input resolution, then the binary mask resized to the image and
  thresholded again): the same boxes, only the mask path differs.

Prints box and mask mAP differences (points, runtime minus PyTorch) and the
per-instance mask IoU (instances matched by box; median, 5th percentile,
worst), and writes them to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np


def _threshold_first(run: Callable[[np.ndarray], List[np.ndarray]], pre: Any) -> Callable[[np.ndarray], List[np.ndarray]]:
    """The outputs of ``run`` with the mask logits turned into the old graph's uint8 masks at the input size."""
    import torch
    import torch.nn.functional as F

    def legacy(tensor: np.ndarray) -> List[np.ndarray]:
        outs = list(run(tensor))
        up = F.interpolate(torch.from_numpy(outs[5]), scale_factor=pre.mask_stride, mode="bilinear")
        outs[5] = (up[..., :pre.height, :pre.width].sigmoid() > pre.mask_thr).numpy().astype(np.uint8)
        return outs

    return legacy


def one(run_json: Path) -> Dict[str, Any]:
    from cvops.detector.coco import coco_eval, read_split
    from cvops.detector.mmdet import predict
    from cvops.detector.runtime import OnnxDetector
    from cvops.export.stage import iou_summary, mask_ious, predict_split

    stages = json.loads(run_json.read_text())["stages"]
    curate, train, export = (stages[s]["artifacts"] for s in ("curate", "train", "export"))
    ann = Path(curate["coco_test"])
    if not read_split(ann)[0]:
        ann = Path(curate["coco_val"])
    images, cat_ids = read_split(ann)
    det = OnnxDetector(export["onnx"])
    thr = json.loads(det.metadata["cvops.thresholds"])
    conf = 0.3  # evaluate.confusion_score_thr's default: the instances a user sees
    ref = predict(Path(train["config"]), Path(train["checkpoint"]), ann, "cpu", thr["score_thr"], thr["max_det"],
                  iou_thr=thr["iou_thr"])
    ref_box, ref_segm = coco_eval(ann, ref)[0]["mAP"], coco_eval(ann, ref, "segm")[0]["mAP"]
    runtimes = {"onnx": det}
    if export.get("onnx_int8"):
        runtimes["int8"] = OnnxDetector(export["onnx_int8"])
    out: Dict[str, Any] = {"run": str(run_json), "split": ann.stem, "torch_map": ref_box, "torch_segm_map": ref_segm}
    for name, d in runtimes.items():
        for path, fn in (("", d.run_any), ("_threshold_first", _threshold_first(d.run_any, d.preprocess))):
            dets = predict_split(fn, d.preprocess, images, cat_ids)
            out[name + path] = {
                "box_map_diff": round((coco_eval(ann, dets)[0]["mAP"] - ref_box) * 100, 3),
                "mask_map_diff": round((coco_eval(ann, dets, "segm")[0]["mAP"] - ref_segm) * 100, 3),
                "mask_iou": iou_summary(mask_ious(ref, dets, images, conf))}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run dirs (or their run.json)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    print("run                      runtime                box diff  mask diff  IoU median  IoU p5  worst")
    for r in args.runs:
        res = one(r / "run.json" if r.is_dir() else r)
        rows.append(res)
        for name, v in res.items():
            if isinstance(v, dict) and "mask_iou" in v:
                m = v["mask_iou"] or {}
                print(f"{Path(res['run']).parent.name[:24]:24s} {name:22s} {v['box_map_diff']:+8.2f} "
                      f"{v['mask_map_diff']:+10.2f} {m.get('median', float('nan')):11.4f} "
                      f"{m.get('p5', float('nan')):7.4f} {m.get('worst', float('nan')):6.3f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
