"""A Triton Inference Server model repository for the exported graph.

::

    triton/
      <project>_onnx/config.pbtxt     platform onnxruntime_onnx
      <project>_onnx/1/model.onnx
      <project>_trt/config.pbtxt      platform tensorrt_plan (only when an engine was built)
      <project>_trt/1/model.plan

``config.pbtxt`` is produced from Triton's own ``ModelConfig`` protobuf (shipped
by tritonclient), with names, element types and dims read from the ONNX graph:
with a dynamic batch, ``max_batch_size`` is the recipe's largest batch and the
dims leave the batch axis out; dynamic batching is on. The preprocessing
contract travels as a model parameter (``cvops.preprocess``).

Serve it with ``tritonserver --model-repository <artifact>/triton``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


def model_config(name: str, platform: str, io: Dict[str, List[Dict[str, Any]]], max_batch: int,
                 preprocess_json: str, gpu: bool) -> str:
    """``config.pbtxt`` text for one model (validated by building the protobuf)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    dynamic = isinstance(io["inputs"][0]["shape"][0], str)
    cfg = mc.ModelConfig(name=name, platform=platform, max_batch_size=int(max_batch) if dynamic else 0)

    def dims(shape: List[Any]) -> List[int]:
        return [int(d) for d in (shape[1:] if dynamic else shape)]

    for spec, field in ((io["inputs"], cfg.input), (io["outputs"], cfg.output)):
        for t in spec:
            entry = field.add(name=t["name"], data_type=getattr(mc, TRITON_TYPES[t["dtype"]]))
            entry.dims.extend(dims(t["shape"]))
    if dynamic:
        cfg.dynamic_batching.preferred_batch_size.extend(sorted({max(1, int(max_batch) // 2), int(max_batch)}))
        cfg.dynamic_batching.max_queue_delay_microseconds = 1000
    group = cfg.instance_group.add(count=1)
    group.kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    cfg.parameters["cvops.preprocess"].string_value = preprocess_json
    return text_format.MessageToString(cfg)


def write_repository(root: Path, project: str, onnx_path: Path, io: Dict[str, List[Dict[str, Any]]], max_batch: int,
                     preprocess_json: str, engine: Optional[Path] = None) -> Dict[str, str]:
    """Write the repository under ``root``; returns {model name: config path} (relative to root's parent)."""
    import re

    base = re.sub(r"[^A-Za-z0-9_]", "_", project)
    out: Dict[str, str] = {}
    entries = [(f"{base}_onnx", "onnxruntime_onnx", onnx_path, "model.onnx", False)]
    if engine is not None and engine.exists():
        entries.append((f"{base}_trt", "tensorrt_plan", engine, "model.plan", True))
    for name, platform, src, fname, gpu in entries:
        d = root / name
        (d / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, d / "1" / fname)
        (d / "config.pbtxt").write_text(model_config(name, platform, io, max_batch, preprocess_json, gpu))
        out[name] = str((d / "config.pbtxt").relative_to(root.parent))
    return out
