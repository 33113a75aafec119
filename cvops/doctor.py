"""What is installed and whether it works (``cvops doctor``: :mod:`cvops.commands.doctor`).

Each check runs the component for real (an mmcv op, a MongoDB ping, an ONNX
Runtime session), not just an import. Exit status 1 when a required
component is broken; optional ones (CUDA, TensorRT) only report.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterator, List, Tuple


class Optional_(RuntimeError):
    """An optional component that is absent: reported, not a failure."""


Check = Tuple[str, bool, Callable[[], str]]  # name, required, probe -> detail


def _torch() -> str:
    import torch

    cuda = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}" \
        if torch.cuda.is_available() else "CPU only (no CUDA device)"
    return f"{torch.__version__}; {cuda}"


def _mmcv() -> str:
    import mmcv
    import torch
    from mmcv.ops import nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    if keep.tolist() != [0, 2]:
        raise RuntimeError(f"mmcv.ops.nms returned {keep.tolist()}, expected [0, 2]")
    devices = "cpu" + (", cuda" if torch.cuda.is_available() and _mmcv_cuda() else "")
    return f"{mmcv.__version__}; compiled ops work ({devices})"


def _mmcv_cuda() -> bool:
    import torch
    from mmcv.ops import nms

    b = torch.tensor([[0, 0, 10, 10.0]], device="cuda")
    try:
        nms(b, torch.tensor([1.0], device="cuda"), 0.5)
        return True
    except RuntimeError:
        return False


def _mm(pkg: str) -> Callable[[], str]:
    def probe() -> str:
        mod = __import__(pkg)
        return mod.__version__

    return probe


def _mongo() -> str:
    uri = os.environ.get("FIFTYONE_DATABASE_URI")
    t0 = time.perf_counter()
    from cvops.fo import connect

    fo = connect()
    import fiftyone.core.odm.database as fod

    client = fod.get_db_client()
    info = client.server_info()
    where = f"external {uri.split('@')[-1]}" if uri else f"embedded mongod ({fo.config.database_dir})"
    return f"fiftyone {fo.__version__}; MongoDB {info.get('version')} reachable, {where}, {time.perf_counter() - t0:.1f}s"


def _ort() -> str:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.array([-1.0, 2.0], dtype=np.float32)})[0]
    if y.tolist() != [0.0, 2.0]:
        raise RuntimeError(f"ONNX Runtime gave {y.tolist()} for Relu([-1, 2])")
    return f"onnxruntime {ort.__version__} (providers: {', '.join(ort.get_available_providers())}); onnx {onnx.__version__}"


def _tensorrt() -> str:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise Optional_("not installed (optional: GPU hosts, `pip install -e .[tensorrt]`); "
                        "export records TensorRT as skipped") from e
    return f"{trt.__version__}"


def _wandb() -> str:
    import wandb

    mode = os.environ.get("WANDB_MODE")
    how = f"WANDB_MODE={mode}" if mode else "offline (cvops default; set WANDB_MODE=online to upload)"
    return f"{wandb.__version__}; {how}"


def _hydra() -> str:
    import hydra
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    launchers = sorted(p.__name__ for p in Plugins.instance().discover(Launcher))
    return f"hydra-core {hydra.__version__}; launchers: {', '.join(launchers)}"


def _store() -> str:
    """The artifact store ``$CVOPS_STORE`` names (default outputs/store): writable? (an s3:// one: reachable,
    with the credentials and endpoint of this environment)."""
    from cvops.store import open_store

    url = os.environ.get("CVOPS_STORE", "outputs/store")
    if "://" not in url:
        return f"folder {os.path.abspath(url)} (CVOPS_STORE or paths.store=...; s3://bucket/prefix for a team)"
    t0 = time.perf_counter()
    store = open_store({"store": url, "cache": os.environ.get("CVOPS_CACHE_DIR") or "~/.cache/cvops"})
    store.check_writable()
    where = os.environ.get("AWS_ENDPOINT_URL") or "AWS"
    return f"{url} writable ({where}, {time.perf_counter() - t0:.1f}s); cache {store.root}"


CHECKS: List[Check] = [
    ("torch", True, _torch),
    ("mmcv", True, _mmcv),
    ("mmengine", True, _mm("mmengine")),
    ("mmdet", True, _mm("mmdet")),
    ("fiftyone + MongoDB", True, _mongo),
    ("ONNX Runtime", True, _ort),
    ("TensorRT", False, _tensorrt),
    ("W&B", True, _wandb),
    ("Hydra", True, _hydra),
    ("artifact store", True, _store),
]


def run_checks() -> Iterator[Tuple[str, bool, bool, str]]:
    """Run every check of :data:`CHECKS`, yielding ``(name, required, ok, detail)`` as each finishes.

    A broken component is reported with its error as the detail, never raised: every component is
    checked whatever the others do.
    """
    for name, required, probe in CHECKS:
        try:
            detail, ok = probe(), True
        except Optional_ as e:
            detail, ok = str(e), False
        except Exception as e:  # report every component, then decide
            detail, ok = f"{type(e).__name__}: {e}", False
        yield name, required, ok, detail


__all__ = ["CHECKS", "run_checks"]
