"""INT8: explicit quantization (QDQ) with onnxruntime.quantization.

Calibration images come from the curated *train* split (never test, which the
gate scores): every class is represented by at least one image, the rest are
drawn with the recipe's seed, and the chosen list (with its hash) is written to
``calibration.json`` in the artifact, so an INT8 model can be traced back to the
exact images that set its scales.

Only the network is quantized (every node up to the last convolution,
per-channel weights); box decoding, NMS and top-k stay float, so the output
contract is unchanged. Two flavours of the same calibration (see
:func:`quantize`): ``model_int8.onnx`` for ONNX Runtime on CPU (uint8
activations, fully fused) and, for TensorRT's explicit-quantization path,
``model_int8_trt.onnx`` (symmetric int8 activations).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

from cvops.errors import StageError
from cvops.detector.runtime import Preprocess

MIN_CALIB_IMAGES = 8


class CalibrationError(StageError):
    """The calibration split cannot represent the model (too few images, missing classes)."""


def select_calibration(coco: Dict[str, Any], n: int, seed: int, split: str = "train") -> Dict[str, Any]:
    """Choose ``n`` images from a COCO split so that every category appears.

    Returns:
        ``{"split", "seed", "images": [file names], "per_class": {name: count}, "sha256"}``.

    Raises:
        CalibrationError: fewer than ``max(n, 8)`` images are wanted than exist, or a
            category has no annotated image in the split.
    """
    images = {im["id"]: im["file_name"] for im in coco["images"]}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    n = int(n)
    if n < MIN_CALIB_IMAGES:
        raise CalibrationError(f"export.calib_images={n}: INT8 calibration needs at least {MIN_CALIB_IMAGES} images")
    if len(images) < n:
        raise CalibrationError(
            f"the curated {split} split has {len(images)} images but export.calib_images={n}; lower "
            f"export.calib_images (>= {MIN_CALIB_IMAGES}) or curate more data")
    by_class: Dict[int, set] = {c: set() for c in names}
    for a in coco["annotations"]:
        by_class.setdefault(a["category_id"], set()).add(a["image_id"])
    missing = [names[c] for c, ims in by_class.items() if not ims and c in names]
    if missing:
        raise CalibrationError(
            f"the curated {split} split has no image of class(es) {missing}: INT8 scales calibrated without them "
            "would clip their activations. Add labelled images of those classes, or drop them with data.classes")
    if len(names) > n:
        raise CalibrationError(f"export.calib_images={n} cannot cover {len(names)} classes; raise it to >= {len(names)}")
    rng = random.Random(int(seed))
    chosen: List[int] = []
    for c in sorted(by_class, key=lambda c: len(by_class[c])):  # rarest class first
        if not by_class[c] & set(chosen):
            chosen.append(rng.choice(sorted(by_class[c])))
    rest = sorted(set(images) - set(chosen))
    rng.shuffle(rest)
    chosen += rest[: n - len(chosen)]
    files = [images[i] for i in chosen]
    per_class = {names[c]: len(ims & set(chosen)) for c, ims in by_class.items() if c in names}
    digest = hashlib.sha256("\n".join(sorted(files)).encode()).hexdigest()
    return {"split": split, "seed": int(seed), "images": files, "per_class": per_class, "sha256": digest}


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over preprocessed images."""

    def __init__(self, files: List[str], pre: Preprocess, input_name: str, batch: int = 1) -> None:
        self.files, self.pre, self.input_name, self.batch = files, pre, input_name, max(1, batch)
        self._it: Optional[Iterator[Dict[str, np.ndarray]]] = None

    def _gen(self) -> Iterator[Dict[str, np.ndarray]]:
        import cv2

        for i in range(0, len(self.files), self.batch):  # a fixed-batch graph gets full batches (last one wraps)
            chunk = [self.files[(i + k) % len(self.files)] for k in range(self.batch)]
            tensors = []
            for f in chunk:
                img = cv2.imread(f, cv2.IMREAD_COLOR)
                if img is None:
                    raise CalibrationError(f"calibration image {f} cannot be read")
                tensors.append(self.pre(img)[0])
            yield {self.input_name: np.stack(tensors)}

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._it is None:
            self._it = self._gen()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def quantize(fp32: Path, out: Path, files: List[str], pre: Preprocess, method: str = "percentile",
             target: str = "cpu") -> Dict[str, Any]:
    """Write a QDQ INT8 model of ``fp32`` calibrated on ``files``; returns what was quantized.

    Args:
        target: ``cpu`` (ONNX Runtime): unsigned, asymmetric activations. ONNX Runtime on x86
            rewrites int8 activations to uint8 only where a QuantizeLinear has one consumer;
            with SiLU (Sigmoid + Mul reading the same tensor) that leaves most convolutions
            with mismatched input/output types, unfused and *slower* than FP32. With uint8
            activations every Conv fuses into QLinearConv (measured: 86/86 on RTMDet-tiny).
            ``tensorrt``: signed, symmetric activations (zero point 0), what TensorRT's
            explicit quantization accepts.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if target not in ("cpu", "tensorrt"):
        raise ValueError(f"quantize target {target!r}: use cpu or tensorrt")
    if method not in ("percentile", "minmax", "entropy"):
        raise CalibrationError(f"export.calib_method={method!r}: use percentile, minmax or entropy")
    trt = target == "tensorrt"
    model = onnx.load(str(fp32))
    network = network_nodes(model)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch = dim0.dim_value if dim0.dim_value > 0 else 1
    quantize_static(
        str(fp32), str(out), _Reader(files, pre, model.graph.input[0].name, batch),
        quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
        weight_type=QuantType.QInt8, per_channel=True, nodes_to_quantize=network,
        calibrate_method=methods[method],
        extra_options={"ActivationSymmetric": trt, "WeightSymmetric": True, "CalibPercentile": 99.999,
                       "CalibMovingAverage": False,
                       # minmax: ranges are merged every few images instead of keeping every activation of
                       # every calibration image in memory (see _chunk)
                       "CalibMaxIntermediateOutputs": _chunk(-(-len(files) // batch))},
    )
    q = onnx.load(str(out))
    q.metadata_props.extend(model.metadata_props)  # keep the preprocessing contract
    q.metadata_props.add(key="cvops.precision", value="int8-qdq")
    q.metadata_props.add(key="cvops.int8_target", value=target)
    onnx.save(q, str(out))
    return {"network_nodes": len(network), "method": method, "format": "QDQ", "per_channel": True, "target": target}


def _chunk(n: int) -> int:
    """Images per range update for minmax calibration.

    onnxruntime's MinMaxCalibrater raises "No data is collected" when the
    image count is a multiple of the chunk (its last chunk is empty), so pick
    one that does not divide ``n``. (The histogram methods, percentile and
    entropy, keep every activation of every image: about 95 MB per 320x320
    RTMDet-tiny image, 6 GB for 64.)
    """
    return next((k for k in range(8, max(9, n)) if n % k), n + 1)


def network_nodes(model: Any) -> List[str]:
    """Names of the nodes up to the last convolution: everything that has a Conv at or below it.

    Box decoding, NMS and top-k come after the last convolution and stay float.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    keep: set = set()
    stack = [n for n in model.graph.node if n.op_type == "Conv"]
    while stack:
        n = stack.pop()
        if n.name in keep:
            continue
        keep.add(n.name)
        stack.extend(producers[i] for i in n.input if i in producers)
    return [n.name for n in model.graph.node if n.name in keep]


def write_calibration(path: Path, selection: Dict[str, Any]) -> None:
    path.write_text(json.dumps(selection, indent=1))
