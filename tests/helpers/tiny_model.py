"""A small, randomly initialised RTMDet-tiny, saved like the train stage does and exported to ONNX.

Used by export/serve/monitor tests that need a real model but not a trained one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Sequence

from omegaconf import OmegaConf

CLASSES = ("circle", "square", "triangle")


def _coco(path: Path) -> Path:
    path.write_text(json.dumps({"images": [], "annotations": [],
                                "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]}))
    return path


def make_checkpoint(out: Path, model: str = "rtmdet_tiny", size: Sequence[int] = (128, 128), seed: int = 0) -> Dict[str, Path]:
    """config.py + checkpoint.pth of an untrained detector of the given cvops model option."""
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from cvops.config import compose_config
    from cvops.train import mmconfig

    register_all_modules()
    out.mkdir(parents=True, exist_ok=True)
    cfg_all = compose_config(["project=tiny", f"model={model}", f"model.image_size=[{size[0]},{size[1]}]",
                              "train=cpu_smoke"])
    exports = {s: _coco(out / f"{s}.json") for s in ("train", "val", "test")}
    for p in exports.values():
        d = json.loads(p.read_text())
        d["images"] = [{"id": 1, "file_name": "x.jpg", "width": size[0], "height": size[1]}]
        p.write_text(json.dumps(d))
    cfg, _ = mmconfig.build(OmegaConf.to_object(cfg_all.model), OmegaConf.to_object(cfg_all.train), list(CLASSES), exports, out, [], cuda=False)
    torch.manual_seed(seed)
    net = MODELS.build(cfg.model)
    _spread_head(net, size)
    cfg.dump(str(out / "config.py"))
    torch.save({"state_dict": net.state_dict(), "meta": {}}, out / "checkpoint.pth")
    return {"config": out / "config.py", "checkpoint": out / "checkpoint.pth"}


def _spread_head(net: Any, size: Sequence[int] = (128, 128)) -> None:
    """Diverse scores and well-formed boxes from an untrained head (no ties, no inverted boxes).

    A freshly initialised head gives every location nearly the same score (the
    prior bias dominates), so comparing two runtimes would hinge on tie-breaking,
    and untrained box branches can overflow ``exp``. The last classification
    and regression convolutions get weights scaled to their measured input, so
    class logits vary with unit spread and box offsets stay small.
    """
    import torch
    from torch import nn

    if not hasattr(net, "bbox_head"):  # two-stage: nothing to spread
        return
    cls_keys = ("rtm_cls", "retina_cls", "multi_level_conv_cls", "multi_level_conv_obj")
    reg_keys = ("rtm_reg", "retina_reg", "multi_level_conv_reg")
    kernel_keys = ("rtm_kernel",)  # RTMDet-Ins: the dynamic mask convs' parameters
    targets = {name: m for name, m in net.bbox_head.named_modules()
               if isinstance(m, nn.Conv2d) and any(k in name for k in cls_keys + reg_keys + kernel_keys)}
    spread: dict = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=name: [spread.setdefault(n, float(inp[0].std()))] and None)
             for name, m in targets.items()]
    g = torch.Generator().manual_seed(0)
    net.eval()
    with torch.no_grad():
        x = torch.rand(1, 3, size[1], size[0], generator=g) * 255  # pixel values, normalised as the model does
        dp = net.data_preprocessor
        if getattr(dp, "_enable_normalize", False):
            x = (x - dp.mean) / dp.std
        net.bbox_head(net.extract_feat(x))
        for h in hooks:
            h.remove()
        for name, m in targets.items():
            fan_in = m.weight[0].numel()
            unit = 1.0 / (max(spread.get(name, 1.0), 1e-6) * fan_in ** 0.5)
            if any(k in name for k in kernel_keys):  # O(1) dynamic weights that vary by location: masks of
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * unit * 0.5)  # every shape, not all-or-none
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
            elif any(k in name for k in cls_keys):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * unit)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5 + (2.0 if "obj" in name else -1.0))
            else:
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * unit * 0.1)
                m.bias.fill_(0.5 if "rtm_reg" in name else 0.0)


def make_onnx(out: Path, size: Sequence[int] = (128, 128), batch: str = "dynamic", score_thr: float = 0.05,
              max_det: int = 100, model: str = "rtmdet_tiny") -> Path:
    """``out/model.onnx`` (+ preprocess.json) of an untrained RTMDet-tiny (``model="rtmdet_ins_tiny"``: the
    instance segmentation graph, with its ``masks`` output); the classes are :data:`CLASSES`."""
    from cvops.detector.mmdet import load_model
    from cvops.export.build import export_model
    from cvops.export.graph import Thresholds

    files = make_checkpoint(out, model=model, size=size)
    cfg, net = load_model(files["config"], files["checkpoint"])
    export_model(net, cfg, out / "model.onnx", size, Thresholds(max_det=max_det, score_thr=score_thr, iou_thr=0.6),
                 CLASSES, batch=batch)
    return out / "model.onnx"


def make_contract_onnx(path: Path, size: Sequence[int] = (64, 64), n: int = 3) -> Path:
    """A graph with the export contract's input, outputs and metadata (``cvops.preprocess``, ``cvops.classes``)
    and no network: ``n`` detections per image whose boxes and scores follow the image's mean value, labels
    ``i % 3`` (:data:`CLASSES`). Built in milliseconds with ``onnx`` alone (no torch, no mmdet), for tests of
    what runs around a model: decoding, preprocessing, ONNX Runtime, un-letterboxing, the JSON answer."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from cvops.detector.runtime import INPUT, Preprocess

    w, h = (int(v) for v in size)
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, min(w, h) / 2, (1, n, 2)).astype(np.float32)
    box0 = np.concatenate([corner, corner + rng.uniform(4, min(w, h) / 2, (1, n, 2)).astype(np.float32)], axis=2)
    consts = {
        "box_gain": np.tile(rng.uniform(0.05, 0.2, (1, n, 2)), 2).astype(np.float32), "box0": box0,  # boxes move
        "score_gain": rng.uniform(1, 3, (1, n)).astype(np.float32), "score0": rng.uniform(-1, 1, (1, n)).astype(np.float32),
        "label_f": np.arange(n, dtype=np.float32).reshape(1, n) % len(CLASSES), "zero": np.zeros((1, 1), np.float32),
        "count": np.full((1, 1), n, np.float32), "shape_b11": np.array([-1, 1, 1], np.int64),
        "shape_b1": np.array([-1, 1], np.int64),
    }
    nodes = [
        helper.make_node("ReduceMean", [INPUT], ["mean4"], axes=[1, 2, 3], keepdims=1),  # (B,1,1,1)
        helper.make_node("Reshape", ["mean4", "shape_b11"], ["m3"]),
        helper.make_node("Reshape", ["mean4", "shape_b1"], ["m2"]),
        helper.make_node("Mul", ["m3", "box_gain"], ["box_shift"]),
        helper.make_node("Add", ["box0", "box_shift"], ["boxes"]),                     # (B,n,4)
        helper.make_node("Mul", ["m2", "score_gain"], ["score_shift"]),
        helper.make_node("Add", ["score_shift", "score0"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),                           # (B,n)
        helper.make_node("Mul", ["m2", "zero"], ["zeros_b1"]),
        helper.make_node("Mul", ["scores", "zero"], ["zeros_bn"]),
        helper.make_node("Add", ["zeros_bn", "label_f"], ["label_b"]),
        helper.make_node("Cast", ["label_b"], ["labels"], to=TensorProto.INT64),        # (B,n)
        helper.make_node("Add", ["zeros_b1", "count"], ["count_b"]),
        helper.make_node("Cast", ["count_b"], ["num_dets"], to=TensorProto.INT64),     # (B,1)
    ]
    graph = helper.make_graph(
        nodes, "contract", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["B", 3, h, w])],
        [helper.make_tensor_value_info("num_dets", TensorProto.INT64, ["B", 1]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["B", n, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", n]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["B", n])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    pre = Preprocess(width=w, height=h, mean=[100.0, 110.0, 120.0], std=[50.0, 55.0, 60.0])
    helper.set_model_props(model, {"cvops.preprocess": json.dumps(pre.to_dict()), "cvops.classes": json.dumps(list(CLASSES))})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
