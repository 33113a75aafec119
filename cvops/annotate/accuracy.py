"""Reviewed accuracy over time: the served model's answers scored against what people corrected them to.

Every edge case the monitor sends for review keeps the model's answer (``prelabels``), which model gave it
(``served_model``: the export fingerprint the server answered with) and when (``served_at``). Once a
person tagged it ``reviewed``, its ``ground_truth`` is the truth for that answer. :func:`reviewed_accuracy`
scores the answers per model and ISO week with the project's one COCO evaluator (box mAP at IoU 0.5), the
figure behind the monitor report's table and ``cvops_reviewed_map50{model, week}`` on ``/metrics``.

The samples are edge cases, chosen because the model struggled: the figure is the accuracy where it is
hard, lower than on a random sample, and comparable between weeks and models chosen the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

#: Where the monitor leaves the figures for the server (beside the request log it read).
FILE = "reviewed_accuracy.json"
WEEKS = 8  # the most recent weeks kept (bounded series on /metrics)


def week_of(stamp: Optional[str]) -> Optional[str]:
    """``2026-W49`` of an ISO time (None if it is not one)."""
    try:
        t = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    year, week, _ = t.isocalendar()
    return f"{year}-W{week:02d}"


def reviewed_accuracy(dataset_name: str, classes: List[str]) -> List[Dict[str, Any]]:
    """``[{"model", "week", "images", "boxes", "mAP50", "mAP"}]`` of the reviewed samples with a served answer,
    newest week first (at most :data:`WEEKS` weeks)."""
    import fiftyone as fo

    from cvops.detector.coco import coco_eval

    if dataset_name not in fo.list_datasets():
        return []
    ds = fo.load_dataset(dataset_name)
    schema = ds.get_field_schema()
    if not {"served_model", "prelabels", "ground_truth"} <= set(schema):
        return []
    view = ds.match_tags("reviewed").exists("served_model").exists("ground_truth")
    groups: Dict[tuple, List[Any]] = {}
    for s in view.iter_samples():
        week = week_of(s["served_at"] if "served_at" in schema else None)
        if week is not None:
            groups.setdefault((str(s["served_model"]), week), []).append(s)
    names = list(classes)
    rows = []
    for (model, week), samples in groups.items():
        gt: Dict[str, Any] = {"images": [], "annotations": [],
                              "categories": [{"id": i + 1, "name": c} for i, c in enumerate(names)]}
        dets: List[Dict[str, Any]] = []
        ids = {c: i + 1 for i, c in enumerate(names)}
        for k, s in enumerate(samples):
            gt["images"].append({"id": k + 1, "width": 1000, "height": 1000, "file_name": s.filepath})
            for d in (s.ground_truth.detections if s.ground_truth else []):
                if d.label in ids and d.bounding_box:
                    box = [v * 1000 for v in d.bounding_box]
                    gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": k + 1,
                                              "category_id": ids[d.label], "bbox": box, "area": box[2] * box[3],
                                              "iscrowd": 0})
            for d in (s.prelabels.detections if s.prelabels else []):
                if d.label in ids and d.bounding_box:
                    dets.append({"image_id": k + 1, "category_id": ids[d.label], "score": float(d.confidence or 0),
                                 "bbox": [v * 1000 for v in d.bounding_box]})
        with tempfile.TemporaryDirectory(prefix="cvops-reviewed-") as tmp:
            path = Path(tmp) / "gt.json"
            path.write_text(json.dumps(gt))
            stats, _ = coco_eval(path, dets)
        rows.append({"model": model, "week": week, "images": len(samples), "boxes": len(gt["annotations"]),
                     "mAP50": round(stats["mAP50"], 4), "mAP": round(stats["mAP"], 4)})
    keep = sorted({r["week"] for r in rows}, reverse=True)[:WEEKS]
    return sorted((r for r in rows if r["week"] in keep), key=lambda r: (r["week"], r["model"]), reverse=True)


def write(log_dir: Path, rows: List[Dict[str, Any]]) -> Path:
    """Leave the figures beside the request log, where ``cvops serve`` reads them for ``/metrics``."""
    from cvops.store.base import write_json_atomic

    path = Path(log_dir) / FILE
    write_json_atomic(path, {"updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             "rows": rows}, durable=False)
    return path


def read(log_dir: Path) -> List[Dict[str, Any]]:
    """The rows :func:`write` left (empty when there are none or the file is damaged)."""
    try:
        rows = json.loads((Path(log_dir) / FILE).read_text(encoding="utf-8")).get("rows", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("mAP50"), (int, float))
            and isinstance(r.get("model"), str) and isinstance(r.get("week"), str)][:WEEKS * 8]
