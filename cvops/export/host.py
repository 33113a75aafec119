"""The host's part of the export fingerprint.

A ``format=tensorrt`` export built where TensorRT or a GPU is missing is a
partial artifact (ONNX only, TensorRT recorded skipped). Adding whether
TensorRT is usable here to the fingerprint makes the same recipe on a GPU host
build the engine instead of reusing that partial artifact. Other formats do not
depend on the host ("").
"""

from __future__ import annotations

from typing import Any


def signature(config: Any, store_root: Any = None) -> str:
    """``config``: the export stage's typed view (only ``export.format`` is read)."""
    if config.export.format != "tensorrt":
        return ""
    from cvops.detector.tensorrt import unavailable

    return "tensorrt-unavailable" if unavailable() else "tensorrt-usable"
