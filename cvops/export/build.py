"""From a trained mmdet checkpoint to ``model.onnx`` + ``preprocess.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from cvops.config import ConfigError
from cvops.export.graph import DetectorGraph, Thresholds, UnsupportedModel, export_onnx, family
from cvops.detector.runtime import Preprocess


class ExportError(ConfigError):
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
        contract["masks"] = ("masks (B, max_det, height, width) uint8, 1 inside the instance, at the input "
                             "resolution; to the original image keep the top-left new_h x new_w (the letterboxed "
                             "image), resize it bilinearly to (w, h) and threshold at 0.5")
    (out.parent / "preprocess.json").write_text(json.dumps(contract, indent=1))
    return contract
