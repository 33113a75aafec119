"""One ONNX graph per detector: normalised image tensor in, final detections out.

::

    images (B, 3, H, W) float32, letterboxed + normalised (see preprocess.json)
      -> backbone, neck, head                       (the trained mmdet model)
      -> box decoding against constant priors       (per head family below)
      -> ONNX NonMaxSuppression, per class          (cvops::nms_keep)
      -> top ``max_det`` per image
    num_dets (B, 1) int32, boxes (B, max_det, 4) float32 x1y1x2y2 in input
    pixels, scores (B, max_det) float32, labels (B, max_det) int32,
    embedding (B, C) float32: the coarsest feature map, average-pooled (what the
    monitor compares with the training data's embeddings; no extra model needed)

The image size is fixed by the recipe (``model.image_size``), so the priors
are constants and only the batch is dynamic. Rows past ``num_dets`` are zero.

Head families (what mmdet's ``predict_by_feat`` does, written out so it traces):

* RTMDet (``RTMDetHead``/``RTMDetSepBNHead``): distances already scaled by the
  stride, ``distance2bbox`` around the point priors, clipped to the input;
  sigmoid scores, every class above the threshold is a candidate.
* YOLOX (``YOLOXHead``): centre offset and log size in stride units;
  score = sigmoid(cls) x sigmoid(objectness); one label per box (the best class),
  as mmdet does.
* RTMDet-Ins (``RTMDetInsHead``/``RTMDetInsSepBNHead``): boxes as RTMDet; then,
  for the ``max_det`` kept boxes, mmdet's mask assembly: each box's kernel
  parameters are three 1x1 convolutions (batched matrix products) over the
  stride-8 prototypes with the coordinates relative to the box's prior: a
  sixth output ``mask_logits`` (B, max_det, h, w) float32 at the prototypes'
  resolution. The runtime takes them to the original image the way mmdet
  does, in logit space (x8 bilinear, bilinear to the original scale, crop,
  then the threshold: :func:`cvops.masks.logits_to_instances`); thresholding
  first and resizing a binary mask, as cvops did before, shifts every edge.

Candidates before NMS are chosen as mmdet chooses them: per level, the
``nms_pre`` best (prior, class) scores above ``score_thr`` (the model's
``test_cfg.nms_pre``; RTMDet, RTMDet-Ins, RetinaNet), and boxes with no width
or height are dropped (``min_bbox_size``).
* RetinaNet (``RetinaHead``): anchors + ``DeltaXYWHBBoxCoder`` deltas, clipped;
  sigmoid scores.

Two-stage detectors are refused: their second stage pools features for a
data-dependent number of proposals (RoIAlign), which has no standard ONNX op.

The graph is produced by torch's dynamo exporter (``torch.onnx.export(...,
dynamo=True)``); NMS is a torch custom op whose ONNX translation is the
standard ``NonMaxSuppression`` followed by a ``ScatterND`` into a keep mask, so
the rest of the graph has static shapes. onnxslim then folds constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from cvops.detector.runtime import INPUT, MASKS, OUTPUTS  # noqa: E402  (the I/O contract lives with the runtime: no torch)

#: mask logit of the rows past ``num_dets`` (sigmoid 0: no pixel of them passes any threshold)
EMPTY_LOGIT = -1.0e4

SINGLE_STAGE = {"RTMDetHead": "rtmdet", "RTMDetSepBNHead": "rtmdet", "YOLOXHead": "yolox", "RetinaHead": "retinanet",
                "RTMDetInsHead": "rtmdet_ins", "RTMDetInsSepBNHead": "rtmdet_ins"}


class UnsupportedModel(ValueError):
    """The detector cannot be exported as one end-to-end graph (the message says why)."""


# ---------------------------------------------------------------- NMS op
@torch.library.custom_op("cvops::nms_keep", mutates_args=())
def nms_keep(boxes: Tensor, scores: Tensor, max_per_class: int, iou_thr: float, score_thr: float) -> Tensor:
    """Keep mask (B, C, N) of per-class NMS, like ONNX ``NonMaxSuppression``.

    Args:
        boxes: (B, N, 4) x1y1x2y2.
        scores: (B, C, N).
    """
    from mmcv.ops import nms

    keep = torch.zeros_like(scores)
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            s = scores[b, c]
            idx = torch.nonzero(s > score_thr).flatten()
            if idx.numel() == 0:
                continue
            _, kept = nms(boxes[b, idx].float().contiguous(), s[idx].float().contiguous(), iou_thr)
            keep[b, c, idx[kept[:max_per_class]]] = 1.0
    return keep


@nms_keep.register_fake
def _(boxes: Tensor, scores: Tensor, max_per_class: int, iou_thr: float, score_thr: float) -> Tensor:
    return torch.empty_like(scores)


def _nms_keep_onnx(boxes: Any, scores: Any, max_per_class: int, iou_thr: float, score_thr: float) -> Any:
    """ONNX translation of :func:`nms_keep` (onnxscript, traced by the exporter)."""
    from onnxscript import opset18 as op

    selected = op.NonMaxSuppression(
        boxes, scores,
        op.Constant(value_ints=[max_per_class]),
        op.Constant(value_floats=[iou_thr]),
        op.Constant(value_floats=[score_thr]),
    )  # (K, 3): batch, class, box
    zeros = op.ConstantOfShape(op.Shape(scores), value=_float_tensor(0.0))
    count = op.Slice(op.Shape(selected), op.Constant(value_ints=[0]), op.Constant(value_ints=[1]))
    ones = op.ConstantOfShape(count, value=_float_tensor(1.0))
    return op.ScatterND(zeros, selected, ones)


def _float_tensor(v: float) -> Any:
    import numpy as np
    import onnx

    return onnx.numpy_helper.from_array(np.array([v], dtype=np.float32))


# ---------------------------------------------------------------- graph
@dataclass
class Thresholds:
    max_det: int = 100
    score_thr: float = 0.05
    iou_thr: float = 0.6


class DetectorGraph(nn.Module):
    """mmdet single-stage detector + decoding + NMS, as one traceable module.

    Args:
        model: a built mmdet detector (eval mode, weights loaded).
        image_size: (width, height) of the input tensor.
        thresholds: NMS / output settings written into the graph.
    """

    def __init__(self, model: nn.Module, image_size: Tuple[int, int], thresholds: Thresholds) -> None:
        super().__init__()
        self.kind = family(model)
        self.model = model
        self.width, self.height = int(image_size[0]), int(image_size[1])
        self.t = thresholds
        head = model.bbox_head
        self.num_classes = int(head.num_classes)
        test_cfg = getattr(head, "test_cfg", None) or getattr(model, "test_cfg", None) or {}
        # YOLOX has no per-level pre-selection in mmdet (one label per box, then NMS)
        self.nms_pre = int(test_cfg.get("nms_pre", -1)) if self.kind != "yolox" else -1
        self.min_bbox_size = float(test_cfg.get("min_bbox_size", -1))
        sizes = [(math.ceil(self.height / s[1]), math.ceil(self.width / s[0])) for s in head.prior_generator.strides]
        with torch.no_grad():
            if self.kind == "retinanet":
                priors = torch.cat(head.prior_generator.grid_priors(sizes, device="cpu"))
                self.register_buffer("means", torch.tensor(head.bbox_coder.means, dtype=torch.float32), persistent=False)
                self.register_buffer("stds", torch.tensor(head.bbox_coder.stds, dtype=torch.float32), persistent=False)
                self.max_ratio = abs(math.log(head.bbox_coder.wh_ratio_clip if hasattr(head.bbox_coder, "wh_ratio_clip")
                                              else 16 / 1000))
            else:
                priors = torch.cat(head.prior_generator.grid_priors(sizes, device="cpu", with_stride=True))
        self.register_buffer("priors", priors.float(), persistent=False)
        self.level_sizes = [h * w * head.prior_generator.num_base_priors[i] for i, (h, w) in enumerate(sizes)]
        bound = torch.tensor([self.width, self.height, self.width, self.height], dtype=torch.float32)
        self.register_buffer("bound", bound, persistent=False)
        self.output_names = list(OUTPUTS)
        if self.kind == "rtmdet_ins":  # masks: dynamic 1x1 convs over the stride-8 prototypes, per kept box
            self.output_names.append(MASKS)
            self.mask_stride = int(head.prior_generator.strides[0][0])
            self.mask_hw = sizes[0]
            with torch.no_grad():
                coord = head.prior_generator.single_level_grid_priors(sizes[0], level_idx=0, device="cpu")
            self.register_buffer("coord", coord.float().reshape(-1, 2), persistent=False)  # (h*w, 2)
            self.weight_nums, self.bias_nums = list(head.weight_nums), list(head.bias_nums)
            self.dyconv_channels = int(head.dyconv_channels)
            self.num_gen_params = int(head.num_gen_params)
            self.mask_thr = float((model.test_cfg or {}).get("mask_thr_binary", 0.5))

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        feats = self.model.extract_feat(images)
        embedding = feats[-1].mean(dim=(2, 3))
        outs = self.model.bbox_head(feats)
        if self.kind == "rtmdet_ins":
            cls_scores, bbox_preds, kernel_preds, mask_feat = outs
            boxes, scores = self._decode_rtmdet(cls_scores, bbox_preds)
        else:
            boxes, scores = getattr(self, f"_decode_{self.kind}")(*outs)  # (B, N, 4), (B, N, C)
        scores = self._preselect(boxes, scores)
        scores_cn = scores.transpose(1, 2).contiguous()  # (B, C, N)
        keep = torch.ops.cvops.nms_keep(boxes, scores_cn, self.t.max_det, self.t.iou_thr, self.t.score_thr)
        flat = (scores_cn * keep).flatten(1)  # (B, C*N), zero where not kept
        k = min(self.t.max_det, flat.shape[1])
        top_scores, top_idx = flat.topk(k, dim=1)
        n = boxes.shape[1]
        labels = torch.div(top_idx, n, rounding_mode="floor")
        box_idx = top_idx - labels * n
        top_boxes = torch.gather(boxes, 1, box_idx.unsqueeze(-1).expand(-1, -1, 4))
        valid = top_scores > 0
        num_dets = valid.sum(dim=1, keepdim=True).to(torch.int32)
        top_boxes = top_boxes * valid.unsqueeze(-1).to(top_boxes.dtype)
        labels = (labels * valid.to(labels.dtype)).to(torch.int32)
        if self.kind == "rtmdet_ins":
            kernels = torch.gather(self._flatten(kernel_preds, self.num_gen_params), 1,
                                   box_idx.unsqueeze(-1).expand(-1, -1, self.num_gen_params))
            masks = self._masks(mask_feat, kernels, self.priors[box_idx], valid)
            return num_dets, top_boxes, top_scores, labels, embedding, masks
        return num_dets, top_boxes, top_scores, labels, embedding

    def _masks(self, mask_feat: Tensor, kernels: Tensor, priors: Tensor, valid: Tensor) -> Tensor:
        """RTMDet-Ins mask assembly (mmdet's ``_mask_predict_by_feat_single``) for the K kept boxes of each
        image at once: mask logits (B, K, h, w) at the prototypes' resolution (stride 8).

        Args:
            mask_feat: (B, P, h, w) prototypes at stride 8; kernels: (B, K, num_gen_params);
            priors: (B, K, 4) point priors with strides of the kept boxes; valid: (B, K) rows below num_dets.
        """
        b, p = mask_feat.shape[0], mask_feat.shape[1]
        h, w = self.mask_hw
        k = kernels.shape[1]
        rel = (priors[:, :, None, :2] - self.coord[None, None]) / (priors[:, :, None, 2:3] * 8)  # (B, K, hw, 2)
        feat = mask_feat.reshape(b, 1, p, h * w).expand(b, k, p, h * w)
        x = torch.cat([rel.transpose(2, 3), feat], dim=2)  # (B, K, 2 + P, hw)
        splits = torch.split(kernels, self.weight_nums + self.bias_nums, dim=2)
        n = len(self.weight_nums)
        for i in range(n):
            cout = self.dyconv_channels if i < n - 1 else 1
            weight = splits[i].reshape(b, k, cout, -1)
            x = torch.matmul(weight, x) + splits[n + i].reshape(b, k, cout, 1)  # a 1x1 conv per instance
            if i < n - 1:
                x = torch.relu(x)
        # rows past num_dets: a logit no pixel reaches the threshold with
        return x.reshape(b, k, h, w).masked_fill(~valid[:, :, None, None], EMPTY_LOGIT)

    def _preselect(self, boxes: Tensor, scores: Tensor) -> Tensor:
        """``scores`` (B, N, C) zeroed where mmdet would not let a candidate reach NMS: outside the ``nms_pre``
        best (prior, class) scores of its level, or a box without width or height."""
        if self.nms_pre > 0:
            b, c = scores.shape[0], scores.shape[2]
            kept, start = [], 0
            for n in self.level_sizes:
                level = scores[:, start:start + n]
                start += n
                if self.nms_pre < n * c:
                    flat = level.reshape(b, n * c)
                    kth = flat.topk(self.nms_pre, dim=1).values[:, -1:]
                    level = torch.where(flat >= kth, flat, torch.zeros_like(flat)).reshape(b, n, c)
                kept.append(level)
            scores = torch.cat(kept, dim=1)
        if self.min_bbox_size >= 0:
            wh = boxes[..., 2:] - boxes[..., :2]
            big = (wh > self.min_bbox_size).all(dim=-1, keepdim=True)
            scores = scores * big.to(scores.dtype)
        return scores

    # -- decoders: (per-level head outputs) -> boxes (B, N, 4), scores (B, N, C)
    def _flatten(self, maps: Sequence[Tensor], channels: int) -> Tensor:
        b = maps[0].shape[0]
        return torch.cat([m.permute(0, 2, 3, 1).reshape(b, -1, channels) for m in maps], dim=1)

    def _clip(self, boxes: Tensor) -> Tensor:
        return torch.minimum(torch.relu(boxes), self.bound)

    def _decode_rtmdet(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        scores = self._flatten(cls_scores, self.num_classes).sigmoid()
        dist = self._flatten(bbox_preds, 4)
        p = self.priors[:, :2]
        boxes = torch.cat([p - dist[..., :2], p + dist[..., 2:]], dim=-1)
        return self._clip(boxes), scores

    def _decode_yolox(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor],
                      objectness: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        cls = self._flatten(cls_scores, self.num_classes).sigmoid()
        obj = self._flatten(objectness, 1).sigmoid()
        pred = self._flatten(bbox_preds, 4)
        stride = self.priors[:, 2:]
        xy = pred[..., :2] * stride + self.priors[:, :2]
        wh = pred[..., 2:].exp() * stride
        boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=-1)
        best = cls.max(dim=-1, keepdim=True).values
        scores = torch.where(cls >= best, cls, torch.zeros_like(cls)) * obj  # one label per box, as mmdet
        return boxes, scores

    def _decode_retinanet(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        scores = self._flatten(cls_scores, self.num_classes).sigmoid()
        d = self._flatten(bbox_preds, 4) * self.stds + self.means
        a = self.priors
        aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        ax, ay = (a[:, 0] + a[:, 2]) * 0.5, (a[:, 1] + a[:, 3]) * 0.5
        dw = d[..., 2].clamp(-self.max_ratio, self.max_ratio)
        dh = d[..., 3].clamp(-self.max_ratio, self.max_ratio)
        cx, cy = ax + d[..., 0] * aw, ay + d[..., 1] * ah
        w, h = aw * dw.exp(), ah * dh.exp()
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
        return self._clip(boxes), scores


def family(model: nn.Module) -> str:
    """The head family cvops knows how to decode, or :class:`UnsupportedModel`."""
    name = type(model).__name__
    head = getattr(model, "bbox_head", None)
    if head is None or getattr(model, "with_rpn", False) or hasattr(model, "roi_head"):
        masks = getattr(getattr(model, "roi_head", None), "with_mask", False)
        instead = ("model=rtmdet_ins_tiny (instance masks)" if masks else
                   "model=rtmdet_tiny, model=yolox_tiny or model=retinanet_r18")
        raise UnsupportedModel(
            f"{name} is a two-stage detector: its second stage pools features for a data-dependent number of "
            "proposals (RoIAlign), which has no standard ONNX operator, so cvops cannot export it as one "
            f"end-to-end graph. Export a single-stage model instead: {instead}")
    kind = SINGLE_STAGE.get(type(head).__name__)
    if kind is None:
        raise UnsupportedModel(f"{name} with head {type(head).__name__} has no cvops box decoder; supported heads: "
                               f"{', '.join(sorted(SINGLE_STAGE))}")
    return kind


def export_onnx(graph: DetectorGraph, path: str, opset: int = 18, batch: str = "dynamic",
                metadata: Dict[str, str] | None = None) -> Dict[str, Any]:
    """Export ``graph`` to ``path``; returns what it wrote (batch mode, opset, IO shapes).

    Args:
        batch: "dynamic" (any batch >= 1) or a fixed batch size as text.
        metadata: written into the model's ``metadata_props``.
    """
    import onnx

    import logging

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notes
    graph.eval()
    fixed = None if str(batch) == "dynamic" else int(batch)
    example_batch = fixed or 2
    x = torch.zeros(example_batch, 3, graph.height, graph.width)
    dynamic_shapes = None if fixed else {"images": {0: torch.export.Dim("batch", min=1, max=1024)}}
    with torch.no_grad():
        program = torch.onnx.export(
            graph, (x,), dynamo=True, opset_version=max(int(opset), 18), input_names=[INPUT],
            output_names=list(getattr(graph, "output_names", OUTPUTS)), dynamic_shapes=dynamic_shapes, external_data=False,
            custom_translation_table={torch.ops.cvops.nms_keep.default: _nms_keep_onnx}, report=False, verify=False,
            verbose=False)
    model = program.model_proto
    model = _slim(model)
    if fixed is None:
        for v in list(model.graph.input) + list(model.graph.output):
            v.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(model, full_check=True)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, path)
    return {"opset": model.opset_import[0].version, "batch": "dynamic" if fixed is None else fixed,
            "io": io_spec(model)}


def _slim(model: Any) -> Any:
    """Constant folding and dead-node removal with onnxslim (a maintained graph tool)."""
    import onnxslim

    try:
        return onnxslim.slim(model)
    except Exception:  # a slimming failure must not cost the export; the unslimmed graph is valid
        return model


def io_spec(model: Any) -> Dict[str, List[Dict[str, Any]]]:
    """Names, element types and shapes (dim names for dynamic axes) of a model's inputs and outputs."""
    import onnx

    def one(v: Any) -> Dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims}

    return {"inputs": [one(v) for v in model.graph.input], "outputs": [one(v) for v in model.graph.output]}
