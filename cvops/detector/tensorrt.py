"""TensorRT engines (TensorRT 10 Python API) from the exported ONNX graph.

* one optimisation profile for ``images`` with min/opt/max batch from the
  recipe (``export.tensorrt.{min,opt,max}_batch``) at the model's image size;
* FP16 (``BuilderFlag.FP16``) and INT8 from the QDQ model (explicit
  quantization: TensorRT reads the Q/DQ scales, no calibrator);
* a workspace limit (``MemoryPoolType.WORKSPACE``) and a timing cache kept next
  to the engine, so rebuilds on the same GPU take seconds;
* ``engine.json`` beside the engine: TensorRT version, CUDA version, GPU name
  and compute capability. :class:`TrtDetector` compares it with the machine and
  rebuilds from the ONNX when they differ (an engine is only valid for the
  TensorRT version and GPU architecture that built it).

Without the ``tensorrt`` package or a CUDA GPU, :func:`unavailable` says why
and the export stage records TensorRT as skipped.

TensorRT 11 removes ``BuilderFlag.FP16``/``INT8`` (strongly typed networks
only: precision comes from the ONNX types and Q/DQ nodes); until that path is
written, :func:`unavailable` reports TensorRT 11 as unsupported instead of
failing mid-build.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from cvops.detector.runtime import INPUT, LEGACY_MASKS, MASKS, OUTPUTS

log = logging.getLogger(__name__)  # details: cvops.log (the console shows its warnings)


def unavailable() -> Optional[str]:
    """Why TensorRT engines cannot be built here, or None when they can."""
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # ImportError, or the PyPI stub failing to find NVIDIA's libraries
        return f"the TensorRT Python package is not usable here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    import tensorrt as trt

    if not hasattr(trt.BuilderFlag, "FP16"):
        return (f"TensorRT {trt.__version__} has no FP16/INT8 builder flags (TensorRT 11 builds strongly typed "
                "networks only); install tensorrt>=10,<11")
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    return None


def machine_fingerprint() -> Dict[str, Any]:
    """What an engine is tied to: TensorRT version, CUDA version, GPU and compute capability."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return {"tensorrt": trt.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0),
            "compute_capability": f"{major}.{minor}"}


def build_engine(onnx_path: Path, engine_path: Path, *, input_shape: Sequence[int], fp16: bool, int8: bool,
                 workspace_gb: float, min_batch: int, opt_batch: int, max_batch: int,
                 timing_cache: Optional[Path] = None) -> Dict[str, Any]:
    """Build and serialise an engine; writes ``<engine>.json`` with the machine fingerprint.

    Args:
        input_shape: (3, H, W) of the ``images`` input.
        int8: build INT8 from the Q/DQ nodes in ``onnx_path`` (explicit quantization).
    """
    import time

    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(float(workspace_gb) * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)  # honour the Q/DQ scales of the explicit-quantization graph
    c, h, w = (int(v) for v in input_shape)
    fixed = network.get_input(0).shape[0]
    profile = builder.create_optimization_profile()
    if fixed > 0:
        min_batch = opt_batch = max_batch = fixed
    profile.set_shape(INPUT, (int(min_batch), c, h, w), (int(opt_batch), c, h, w), (int(max_batch), c, h, w))
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.exists() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)  # a cache from another device is not reused
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} (see its log above)")
    _atomic_write(engine_path, bytes(serialized))  # readers never see half an engine
    if cache is not None and timing_cache is not None:
        _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    info = {**machine_fingerprint(), "fp16": bool(fp16), "int8": bool(int8), "workspace_gb": float(workspace_gb),
            "profile": {"min": [int(min_batch), c, h, w], "opt": [int(opt_batch), c, h, w], "max": [int(max_batch), c, h, w]},
            "onnx": str(onnx_path), "build_seconds": round(time.perf_counter() - t0, 2)}
    _atomic_write(engine_path.with_suffix(".json"), json.dumps(info, indent=1).encode())
    return info


def _atomic_write(path: Path, data: bytes) -> None:
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def stale(engine_path: Path, here: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """Why an engine does not fit this machine (None when it does).

    Args:
        here: the machine's fingerprint (default: :func:`machine_fingerprint`).
    """
    meta = engine_path.with_suffix(".json")
    if not engine_path.exists():
        return f"{engine_path} does not exist"
    if not meta.exists():
        return f"{meta} (the engine's fingerprint) is missing"
    try:
        built = json.loads(meta.read_text())
    except ValueError:
        return f"{meta} (the engine's fingerprint) is unreadable"
    here = here if here is not None else machine_fingerprint()
    # an engine is tied to the TensorRT version and the GPU architecture (not to the marketing name, nor to
    # the CUDA toolkit torch was built with)
    diff = [f"{k}: built {built.get(k)!r}, here {v!r}" for k, v in here.items()
            if k in ("tensorrt", "compute_capability") and built.get(k) != v]
    return "; ".join(diff) or None


class TrtDetector:
    """A cvops engine in a TensorRT execution context (I/O through torch CUDA tensors).

    An engine whose fingerprint does not match this machine is rebuilt from
    ``onnx_path`` with the settings recorded beside it, instead of failing.
    """

    def __init__(self, engine_path: Path, onnx_path: Optional[Path] = None) -> None:
        from filelock import FileLock

        self.path = Path(engine_path)
        why = stale(self.path)
        if why:  # several server workers may find it stale at once: one rebuilds, the others wait and reuse it
            with FileLock(str(self.path) + ".lock"):
                why = stale(self.path)
                if why:
                    self._rebuild(onnx_path, why)
            self.rebuilt = why
        else:
            self.rebuilt = None
        self._open()

    def _rebuild(self, onnx_path: Optional[Path], why: str) -> None:
        """Build the engine again from ``onnx_path`` with the settings recorded beside it."""
        if onnx_path is None:
            raise RuntimeError(f"engine {self.path} does not fit this machine ({why}) and no ONNX to rebuild from")
        old = json.loads(self.path.with_suffix(".json").read_text()) if self.path.with_suffix(".json").exists() else {}
        prof = old.get("profile", {})
        log.warning("  export: rebuilding %s from %s (%s)", self.path.name, onnx_path, why)
        import onnx

        dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        build_engine(Path(onnx_path), self.path, input_shape=[d.dim_value for d in dims[1:]],
                     fp16=old.get("fp16", True), int8=old.get("int8", False),
                     workspace_gb=old.get("workspace_gb", 2.0), min_batch=prof.get("min", [1])[0],
                     opt_batch=prof.get("opt", [1])[0], max_batch=prof.get("max", [8])[0],
                     timing_cache=self.path.parent / "timing.cache")

    def _open(self) -> None:
        import threading

        import tensorrt as trt
        import torch

        self._trt, self._torch = trt, torch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self._lock = threading.Lock()  # one execution context: the server's threads take turns
        batch = self.engine.get_tensor_shape(INPUT)[0]
        self.fixed_batch: Optional[int] = int(batch) if batch > 0 else None
        lo, _, hi = self.engine.get_tensor_profile_shape(INPUT, 0)
        self.batch_range = (int(lo[0]), int(hi[0]))
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        #: the graph's outputs in order; an instance segmentation engine has ``masks`` last
        self.outputs = [n for n in (*OUTPUTS, MASKS, LEGACY_MASKS) if n in names]

    def run(self, tensor: np.ndarray) -> List[np.ndarray]:
        """Raw outputs (num_dets, boxes, scores, labels, embedding[, masks]) for a preprocessed batch."""
        trt, torch = self._trt, self._torch
        lo, hi = self.batch_range
        if not lo <= len(tensor) <= hi:
            raise ValueError(f"batch {len(tensor)} is outside the engine's optimisation profile [{lo}, {hi}] "
                             f"({self.path}); rebuild with export.tensorrt.min_batch/max_batch covering it")
        with self._lock, torch.cuda.stream(self.stream):  # copies, allocations and inference on one stream
            x = torch.from_numpy(np.ascontiguousarray(tensor)).cuda(non_blocking=False)
            if not self.context.set_input_shape(INPUT, tuple(x.shape)):
                raise ValueError(f"TensorRT refused input shape {tuple(x.shape)} for {self.path}")
            self.context.set_tensor_address(INPUT, x.data_ptr())
            outs = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
                outs[name] = torch.empty(shape, dtype=dtype, device="cuda")
                self.context.set_tensor_address(name, outs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution of {self.path} failed")
            self.stream.synchronize()
            return [outs[n].cpu().numpy() for n in self.outputs]


class EngineDetector:
    """:class:`cvops.detector.runtime.OnnxDetector`'s interface over a TensorRT engine (what ``cvops serve`` uses).

    The preprocessing contract and class names come from the ONNX the engine was built from.
    """

    def __init__(self, engine_path: Path, onnx_path: Path) -> None:
        import onnx

        from cvops.detector.runtime import Preprocess

        self.path = Path(engine_path)
        self.engine = TrtDetector(self.path, Path(onnx_path))
        meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
        self.metadata = meta
        self.preprocess = Preprocess.from_dict(json.loads(meta["cvops.preprocess"]))
        self.classes: List[str] = json.loads(meta.get("cvops.classes", "[]"))
        self.fixed_batch = self.engine.fixed_batch

    def run(self, tensor: np.ndarray) -> List[np.ndarray]:
        return self.engine.run(tensor)

    def predict(self, images: Sequence[np.ndarray]) -> List[Any]:
        """Detections for BGR uint8 images (:meth:`detect` of each prepared image)."""
        return self.detect([self.preprocess.prepare(im) for im in images])

    def detect(self, prepared: Sequence[Any]) -> List[Any]:
        """Detections for images already preprocessed (``Preprocess.prepare``): the engine and the
        un-letterboxing only, as :meth:`cvops.detector.runtime.OnnxDetector.detect`."""
        from cvops.detector.runtime import run_padded, split_outputs

        tensor = np.stack([p.tensor for p in prepared])
        chunk = self.fixed_batch or (None if len(tensor) <= self.engine.batch_range[1] else self.engine.batch_range[1])
        outputs = run_padded(self.run, tensor, chunk)
        return split_outputs(outputs, [p.scale for p in prepared], [p.size for p in prepared], self.preprocess)
