"""From a trained mmdet checkpoint to ``model.onnx`` + ``preprocess.json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from cvops.errors import StageError
from cvops.export.graph import DetectorGraph, Thresholds, UnsupportedModel, export_onnx, family
from cvops.detector.runtime import Preprocess


class ExportError(StageError):
    """An export the user has to change something for (the message says what)."""


def export_model(model: Any, cfg: Any, out: Path, image_size: Sequence[int], thresholds: Thresholds,
                 classes: Sequence[str], batch: str = "dynamic", opset: int = 18,
                 metadata: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Write ``out`` (ONNX) and ``preprocess.json`` beside it; returns the export's description.

    Raises:
        ExportError: the model type cannot be exported (named, with the reason).
    """
    try:
        kind = family(model)
    except UnsupportedModel as e:
        raise ExportError(str(e)) from None
    pre = Preprocess.from_mmdet(cfg, image_size)
    graph = DetectorGraph(model, (pre.width, pre.height), thresholds)
    if graph.kind == "rtmdet_ins":  # how its mask logits reach the image travels with the input contract
        pre = dataclasses.replace(pre, mask_stride=graph.mask_stride, mask_thr=graph.mask_thr)
    meta = {
        "cvops.preprocess": json.dumps(pre.to_dict()),
        "cvops.classes": json.dumps(list(classes)),
        "cvops.thresholds": json.dumps(vars(thresholds)),
        "cvops.family": kind,
        **{f"cvops.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()},
    }
    info = export_onnx(graph, str(out), opset=opset, batch=batch, metadata=meta)
    contract = {"preprocess": pre.to_dict(), "classes": list(classes), "thresholds": vars(thresholds),
                "family": kind, **info,
                "boxes": "x1y1x2y2 in input pixels; divide by (new_w / w, new_h / h) and clip to the original image",
                "rows": "rows past num_dets are zero"}
    if graph.kind == "rtmdet_ins":  # the sixth output: how its masks reach the original image
        contract["masks"] = (f"mask_logits (B, max_det, height / {pre.mask_stride}, width / {pre.mask_stride}) "
                             "float32 (rounded up); to the original image as mmdet does: bilinear (align_corners "
                             f"false) x{pre.mask_stride}, bilinear to ceil(H1 / scale_x) x ceil(W1 / scale_y), "
                             f"keep the top-left h x w, then sigmoid > {pre.mask_thr:g}")
    (out.parent / "preprocess.json").write_text(json.dumps(contract, indent=1))
    return contract
