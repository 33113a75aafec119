"""A trained mmdet detector: loaded once, predicting on a COCO split (torch and mmdet imported lazily).

Used by evaluate (mAP of the checkpoint) and export (the PyTorch reference of the parity gate, the model
to export).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple


def load_model(config: Path, checkpoint: Optional[Path], device: str = "cpu",
               test_cfg: Optional[Dict[str, Any]] = None, max_score_thr: Optional[float] = None) -> Tuple[Any, Any]:
    """The mmengine Config and the built detector with its weights (eval mode); ``max_score_thr`` lowers the
    model's own score thresholds to at most that value."""
    from mmdet.apis import init_detector
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from cvops.console import adopt_mmengine
    from cvops.detector.checkpoint import allow_mmengine_checkpoints

    adopt_mmengine()  # its checkpoint lines: cvops.log
    register_all_modules()
    allow_mmengine_checkpoints()
    cfg = Config.fromfile(str(config))
    if test_cfg:
        apply_test_cfg(cfg, **test_cfg)
    if max_score_thr is not None:
        _lower_score_thr(cfg.model.get("test_cfg"), max_score_thr)
    model = init_detector(cfg, str(checkpoint) if checkpoint else None, device=device)
    model.eval()
    return cfg, model


def apply_test_cfg(cfg: Any, score_thr: float, iou_thr: float, max_det: int) -> None:
    """Make mmdet's own post-processing use the export thresholds (for a like-for-like reference)."""
    tc = cfg.model.get("test_cfg")
    if tc is None:
        return
    tc["score_thr"] = float(score_thr)
    tc["max_per_img"] = int(max_det)
    tc["nms"] = dict(type="nms", iou_threshold=float(iou_thr))
    if "min_bbox_size" in tc:
        tc["min_bbox_size"] = 0


def _lower_score_thr(node: Any, score_thr: float) -> None:
    """Every ``score_thr`` of a test_cfg (nested ones too, e.g. Faster R-CNN's ``rcnn``) at most ``score_thr``
    (the config object the built model reads)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "score_thr" and isinstance(v, (int, float)):
                node[k] = min(float(v), float(score_thr))
            else:
                _lower_score_thr(v, score_thr)


def predict(config: Path, checkpoint: Path, ann_file: Path, device: str, score_thr: float,
            max_det: int, iou_thr: Optional[float] = None) -> List[Dict[str, Any]]:
    """COCO-format detections of a checkpoint on one exported split (with a ``segmentation`` RLE per
    detection when the model predicts instance masks).

    With ``iou_thr``, the model's own post-processing uses (score_thr, iou_thr,
    max_det) too: the like-for-like reference for an exported graph.
    """
    import numpy as np
    import torch
    from mmengine.runner import Runner

    from cvops import masks as rle
    from cvops.console import track

    test_cfg = dict(score_thr=score_thr, iou_thr=iou_thr, max_det=max_det) if iou_thr is not None else None
    # without a like-for-like test_cfg, the model's own score threshold must not hide what score_thr asks for
    cfg, model = load_model(config, checkpoint, device, test_cfg=test_cfg,
                            max_score_thr=score_thr if test_cfg is None else None)
    loader_cfg = cfg.test_dataloader
    loader_cfg.dataset.ann_file = str(ann_file)
    loader_cfg.num_workers, loader_cfg.persistent_workers = 0, False
    loader = Runner.build_dataloader(loader_cfg)
    cat_ids = [c["id"] for c in json.loads(Path(ann_file).read_text())["categories"]]
    out: List[Dict[str, Any]] = []
    with torch.no_grad():
        for batch in track(loader, f"predict: {Path(ann_file).stem}"):
            for sample in model.test_step(batch):
                p = sample.pred_instances
                keep = p.scores >= score_thr
                boxes, scores, labels = p.bboxes[keep], p.scores[keep], p.labels[keep]
                # mmdet clips to the letterboxed canvas, so a box can reach into the padding past the image's
                # edge; in the image it ends at the edge (what an exported model's runtime returns too)
                h, w = sample.ori_shape[:2]
                boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
                                     boxes[:, 3].clamp(0, h)], dim=1) if len(boxes) else boxes
                order = scores.argsort(descending=True)[:max_det]
                masks = p.masks[keep][order].cpu().numpy() if "masks" in p else None  # instance segmentation
                if masks is not None and masks.shape[1:] != (h, w):
                    # mmdet sizes its masks ceil(canvas / scale) with the x and y scales swapped, a row or column
                    # short of the image when they differ: the missing pixels are outside every mask
                    full = np.zeros((len(masks), h, w), bool)
                    full[:, :min(h, masks.shape[1]), :min(w, masks.shape[2])] = masks[:, :h, :w]
                    masks = full
                for k, (b, s, lab) in enumerate(zip(boxes[order].tolist(), scores[order].tolist(),
                                                    labels[order].tolist())):
                    out.append({"image_id": int(sample.img_id), "category_id": cat_ids[lab],
                                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)})
                    if masks is not None:
                        out[-1]["segmentation"] = rle.encode(masks[k])
    return out
