"""Running an exported detector: the preprocessing contract and an ONNX Runtime session.

The graph expects exactly what mmdet's test pipeline feeds the trained model,
written down in ``preprocess.json`` (and the ONNX ``metadata_props`` key
``cvops.preprocess``) so any runtime can reproduce it:

1. decode to 8-bit, 3 channels, in ``channel_order`` (mmdet reads BGR);
2. resize keeping the aspect ratio with ``scale = min(width / w, height / h)``,
   new size ``(int(w * scale + 0.5), int(h * scale + 0.5))`` (each side at least 1), bilinear;
3. pad bottom/right to ``(height, width)`` with ``pad_value`` (raw pixel values);
4. ``(x - mean) / std`` per channel, HWC -> CHW, float32, batch on axis 0.

Boxes come back in input pixels; divide by ``(new_w / w, new_h / h)`` and clip
to the original image to get original pixels (:meth:`Preprocess.unletterbox`).
Masks (instance segmentation graphs) come back as logits at the prototypes'
resolution (``mask_stride``); they reach the original image as mmdet takes
them there, in logit space: x ``mask_stride`` bilinear, bilinear to
``ceil(H1 / scale_x) x ceil(W1 / scale_y)``, keep the top-left ``h x w``, then
``sigmoid > mask_thr`` (:meth:`Preprocess.unletterbox_masks`,
:func:`cvops.masks.logits_to_instances`). Graphs exported before this contract
return binary ``masks`` at the input resolution; they are still read.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cvops.masks import InstanceMasks, logits_to_instances, upscale_instances

#: The graph's input and outputs (see :mod:`cvops.export.graph`); an instance segmentation graph has a sixth,
#: ``mask_logits`` (B, max_det, h, w) float32 at the prototypes' resolution (``Preprocess.mask_stride``).
INPUT = "images"
OUTPUTS = ("num_dets", "boxes", "scores", "labels", "embedding")
MASKS = "mask_logits"
#: the sixth output of graphs exported before mask logits: (B, max_det, H, W) uint8 masks at the input resolution
LEGACY_MASKS = "masks"


@dataclass
class Preprocess:
    """The input contract of an exported graph (see the module docstring)."""

    width: int
    height: int
    mean: List[float]
    std: List[float]
    channel_order: str = "BGR"  # of the tensor the graph takes
    pad_value: List[float] = field(default_factory=lambda: [114.0, 114.0, 114.0])
    resize: str = "keep_ratio_bilinear"
    pad: str = "bottom_right"
    layout: str = "NCHW"
    dtype: str = "float32"
    mask_stride: int = 8  # instance segmentation graphs: the stride of their mask logits
    mask_thr: float = 0.5  # ... and the probability a pixel must pass (mmdet's mask_thr_binary)

    @classmethod
    def from_mmdet(cls, cfg: Any, image_size: Sequence[int]) -> "Preprocess":
        """Read the contract from a trained model's mmengine config.

        The input size is the test pipeline's (``Pad.size``, else ``Resize.scale``): what the model
        was evaluated at; ``image_size`` (the recipe's ``model.image_size``) only when it has neither.
        """
        dp = cfg.model.data_preprocessor
        mean = [float(v) for v in dp.get("mean", [0.0, 0.0, 0.0]) or [0.0, 0.0, 0.0]]
        std = [float(v) for v in dp.get("std", [1.0, 1.0, 1.0]) or [1.0, 1.0, 1.0]]
        order = "RGB" if dp.get("bgr_to_rgb", False) or dp.get("rgb_to_bgr", False) else "BGR"
        pad_value = list(mean)  # no Pad transform: mmdet pads after normalising, with 0 (= the mean pixel)
        w, h = (int(v) for v in image_size)
        resize = pad = None
        for t in cfg.test_pipeline if "test_pipeline" in cfg else cfg.test_dataloader.dataset.pipeline:
            if t.get("type") == "Pad":
                pv = t.get("pad_val", 0)
                pv = pv.get("img", 0) if isinstance(pv, dict) else pv
                pad_value = [float(v) for v in (pv if isinstance(pv, (list, tuple)) else [pv] * 3)]
                pad = t.get("size")
            if t.get("type") == "Resize" and t.get("scale"):
                resize = t.get("scale")
        size = pad or resize  # what the model was trained and evaluated at (sizes are rounded when scaled)
        if size and len(size) == 2:
            w, h = int(size[0]), int(size[1])
        return cls(width=w, height=h, mean=mean, std=std, channel_order=order, pad_value=pad_value)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Preprocess":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def __call__(self, bgr: np.ndarray) -> Tuple[np.ndarray, Tuple[float, float]]:
        """(3, H, W) float32 tensor of one BGR uint8 image, and its (x, y) scale factor."""
        import cv2

        if bgr.ndim == 2:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        h, w = bgr.shape[:2]
        s = min(self.width / w, self.height / h)
        # never a 0 side: a 1300x1 image letterboxes to 128x1, not 128x0 (cv2.resize refuses 0)
        nw = max(1, min(int(w * s + 0.5), self.width))
        nh = max(1, min(int(h * s + 0.5), self.height))
        img = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nw, nh) != (w, h) else bgr
        # one channel plane at a time: numpy broadcasts a 3-vector over (H, W, 3) about 10x slower than a
        # scalar over a contiguous plane, and the arithmetic (float32, subtract then divide) is the same
        out = np.empty((3, self.height, self.width), np.float32)
        pad, mean, std = (np.asarray(v, np.float32) for v in (self.pad_value, self.mean, self.std))
        for c in range(3):
            plane = out[c]
            plane[...] = pad[c]
            plane[:nh, :nw] = img[:, :, 2 - c if self.channel_order == "RGB" else c]
            plane -= mean[c]
            plane /= std[c]
        return out, (nw / w, nh / h)

    def batch(self, images: Sequence[np.ndarray]) -> Tuple[np.ndarray, List[Tuple[float, float]]]:
        tensors, scales = zip(*(self(im) for im in images))
        return np.stack(tensors), list(scales)

    def prepare(self, bgr: np.ndarray) -> "Prepared":
        """One image ready for the graph: its tensor, scale factor and original (width, height)."""
        tensor, scale = self(bgr)
        return Prepared(tensor, scale, (int(bgr.shape[1]), int(bgr.shape[0])))

    def unletterbox_masks(self, masks: np.ndarray, scale: Tuple[float, float], size: Tuple[int, int]) -> InstanceMasks:
        """A graph's masks of one image back to the original (width, height) image, each computed over the part
        of the image it can reach only, when first read (a large image costs no more memory than its masks).

        Float ``masks`` (n, h, w) are mask logits at ``mask_stride``: taken to the image as mmdet does
        (:func:`cvops.masks.logits_to_instances`). ``uint8`` masks (n, H, W) at the input resolution (graphs
        exported before mask logits): the top-left ``new_h x new_w`` resized bilinearly, thresholded at 0.5.
        """
        masks = np.asarray(masks)
        if masks.dtype != np.uint8:
            return logits_to_instances(masks, self.mask_stride, scale, size, self.mask_thr)
        w, h = int(size[0]), int(size[1])
        nw = max(1, int(round(scale[0] * w)))
        nh = max(1, int(round(scale[1] * h)))
        return upscale_instances(masks, (nw, nh), (w, h))

    @staticmethod
    def unletterbox(boxes: np.ndarray, scale: Tuple[float, float], size: Tuple[int, int]) -> np.ndarray:
        """Boxes from input pixels back to the original (width, height) image."""
        out = boxes / np.array([scale[0], scale[1], scale[0], scale[1]], np.float32)
        out[:, 0::2] = out[:, 0::2].clip(0, size[0])
        out[:, 1::2] = out[:, 1::2].clip(0, size[1])
        return out


@dataclass
class Prepared:
    """One preprocessed image (:meth:`Preprocess.prepare`): what :meth:`OnnxDetector.detect` takes."""

    tensor: np.ndarray  # (3, H, W) float32
    scale: Tuple[float, float]  # (x, y) letterbox scale factor
    size: Tuple[int, int]  # original (width, height)


@dataclass
class Detections:
    """Detections of one image in original pixels."""

    boxes: np.ndarray  # (n, 4) x1y1x2y2
    scores: np.ndarray  # (n,)
    labels: np.ndarray  # (n,) class indices
    embedding: Optional[np.ndarray] = None  # (C,) pooled features of the image (graph output ``embedding``)
    #: instance masks in original pixels (mask models), each kept as its own region (an (n, height, width)
    #: array given here is converted): ``masks[i]`` is one full mask, ``masks.rle(i)`` its COCO RLE
    masks: Optional[InstanceMasks] = None

    def __post_init__(self) -> None:
        if self.masks is not None and not isinstance(self.masks, InstanceMasks):
            self.masks = InstanceMasks.from_array(np.asarray(self.masks, bool))

    def to_json(self, classes: Sequence[str], masks: "MaskFormat | str" = "none") -> List[Dict[str, Any]]:
        """One ``{"box", "score", "label", "class"}`` per detection; with instance masks also ``"mask_area"``
        (pixels) and, by ``masks``: ``"rle"`` a ``"mask"`` (COCO compressed RLE of the original image),
        ``"polygon"`` a ``"polygon"`` (outer outlines, :func:`cvops.masks.to_polygons`), ``"none"`` (default)
        neither. Box-only detections ignore ``masks``."""
        fmt = MaskFormat(masks)
        out = [{"box": [round(float(v), 2) for v in b], "score": round(float(s), 4), "label": int(lab),
                "class": classes[int(lab)] if int(lab) < len(classes) else str(int(lab))}
               for b, s, lab in zip(self.boxes, self.scores, self.labels)]
        if self.masks is None:
            return out
        for i, (d, a) in enumerate(zip(out, self.masks.areas())):
            d["mask_area"] = int(a)
            if fmt is MaskFormat.RLE:
                d["mask"] = self.masks.rle(i)
            elif fmt is MaskFormat.POLYGON:
                d["polygon"] = self.masks.polygons(i)
        return out


class MaskFormat(str, Enum):
    """How :meth:`Detections.to_json` writes each instance mask (the serve endpoint's ``?masks=``)."""

    RLE = "rle"
    POLYGON = "polygon"
    NONE = "none"


def split_outputs(outputs: Sequence[np.ndarray], scales: Sequence[Tuple[float, float]],
                  sizes: Sequence[Tuple[int, int]], pre: Preprocess) -> List[Detections]:
    """The graph's padded (num_dets, boxes, scores, labels) per image, in original pixels."""
    num, boxes, scores, labels = outputs[:4]
    emb = outputs[4] if len(outputs) > 4 else None
    masks = outputs[5] if len(outputs) > 5 else None
    out = []
    for i, (scale, size) in enumerate(zip(scales, sizes)):
        n = int(num[i].reshape(-1)[0])
        out.append(Detections(pre.unletterbox(np.asarray(boxes[i, :n], np.float32), scale, size),
                              np.asarray(scores[i, :n], np.float32), np.asarray(labels[i, :n], np.int64),
                              None if emb is None else np.asarray(emb[i], np.float32),
                              None if masks is None else pre.unletterbox_masks(masks[i, :n], scale, size)))
    return out


class OnnxDetector:
    """An exported cvops graph in an ONNX Runtime session.

    Args:
        path: ``model.onnx`` (or ``model_int8.onnx``) written by the export stage.
        threads: intra-op threads (None: ONNX Runtime's default, one per core).
        providers: ONNX Runtime execution providers (default CPU).
        spin: let idle intra-op threads spin for the next task (ONNX Runtime's default). A server turns it off:
            spinning threads take the cores its request threads need to decode and answer (measured on
            2 cores, the quickstart_seg export under 8 clients: 45.8 -> 54.4 requests/s).
    """

    def __init__(self, path: str | Path, threads: Optional[int] = None, providers: Optional[List[str]] = None,
                 spin: bool = True) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # NOT_IMPLEMENTED: an operator (or type) this ONNX Runtime lacks
            msg = str(e)
            raise RuntimeError(f"ONNX Runtime {ort.__version__} cannot load {self.path}: {missing_operator(msg)}") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        self.preprocess = Preprocess.from_dict(json.loads(meta["cvops.preprocess"]))
        self.classes: List[str] = json.loads(meta.get("cvops.classes", "[]"))
        self.metadata = dict(meta)
        shape = self.session.get_inputs()[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        names = [o.name for o in self.session.get_outputs()]
        # graphs exported before ``embedding`` have four outputs; before mask logits, masks were ``masks``
        self.outputs = [n for n in (*OUTPUTS, MASKS, LEGACY_MASKS) if n in names]

    def run(self, tensor: np.ndarray) -> List[np.ndarray]:
        """The raw graph outputs for a preprocessed (B, 3, H, W) batch."""
        return self.session.run(self.outputs, {INPUT: tensor})

    def run_any(self, tensor: np.ndarray) -> List[np.ndarray]:
        """:meth:`run` for any batch size, also on a fixed-batch graph (chunks, last one zero-padded)."""
        return run_padded(self.run, tensor, self.fixed_batch)

    def predict(self, images: Sequence[np.ndarray]) -> List[Detections]:
        """Detections for BGR uint8 images (any sizes), in original pixels (:meth:`detect` of each prepared)."""
        return self.detect([self.preprocess.prepare(im) for im in images])

    def detect(self, prepared: Sequence[Prepared]) -> List[Detections]:
        """Detections for images already preprocessed (:meth:`Preprocess.prepare`): the network and the
        un-letterboxing only, so a server can preprocess each image in its own request."""
        tensor = np.stack([p.tensor for p in prepared])
        return split_outputs(self.run_any(tensor), [p.scale for p in prepared], [p.size for p in prepared],
                             self.preprocess)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of x1y1x2y2 boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])).clip(0)
    ih = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])).clip(0)
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]).clip(0) * (x[:, 3] - x[:, 1]).clip(0)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def run_padded(run: Any, tensor: np.ndarray, fixed: Optional[int]) -> List[np.ndarray]:
    """Run a graph on a batch of any size: as is for a dynamic batch, else in chunks of ``fixed``
    (the last chunk padded with zeros, its padding rows dropped from the outputs)."""
    if not fixed or len(tensor) == fixed:
        return run(tensor)
    parts = []
    for i in range(0, len(tensor), fixed):
        chunk = tensor[i:i + fixed]
        n = len(chunk)
        if n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)])
        parts.append([o[:n] for o in run(chunk)])
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def missing_operator(message: str) -> str:
    """Name the operator ONNX Runtime could not find, from its error text."""
    import re

    m = re.search(r"Could not find an implementation for (\S+)\((\d+)\) node with name '([^']*)'", message)
    if m:
        return (f"it has no kernel for operator {m.group(1)} (opset {m.group(2)}, node '{m.group(3)}'); "
                "upgrade onnxruntime or export with a lower export.opset")
    m = re.search(r"No Op registered for (\S+) with domain_version of (\d+)", message)
    if m:
        return (f"it does not know operator {m.group(1)} (opset {m.group(2)}); upgrade onnxruntime or export with "
                "a lower export.opset")
    return message.strip().splitlines()[0] if message.strip() else "unknown error"


def latency(fn: Any, warmup: int = 3, repeats: int = 20) -> Dict[str, float]:
    """Median and p90 wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    a = np.asarray(times)
    return {"median_ms": round(float(np.median(a)), 2), "p90_ms": round(float(np.percentile(a, 90)), 2)}
