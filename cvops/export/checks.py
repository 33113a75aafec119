"""The export stage's own check of its config: every value the schema's types cannot refuse, before any work.

Light to import (no torch, no numpy): the preflight runs it for every recipe, whatever stages it runs.
"""

from __future__ import annotations

from typing import Any

from cvops.errors import ConfigError
from cvops.schema import ExportConfig, ExportFormat


def check(ex: ExportConfig) -> None:
    """Every value of ``export`` the schema's types cannot refuse on their own, checked before any stage runs
    (the preflight calls it) and again when the stage starts.

    Raises:
        ConfigError: naming the key, its value and what to use instead.
    """
    def need(ok: bool, key: str, value: Any, want: str) -> None:
        if not ok:
            raise ConfigError(f"export.{key}={value!r}: {want}")

    need(ex.batch == "dynamic" or (ex.batch.isdigit() and int(ex.batch) >= 1), "batch", ex.batch,
         "use 'dynamic' or a batch size such as 1")
    need(ex.opset >= 18, "opset", ex.opset, "the dynamo exporter writes opset 18 or newer")
    need(ex.max_det >= 1, "max_det", ex.max_det, "keep at least one detection per image")
    need(0.0 <= ex.score_thr < 1.0, "score_thr", ex.score_thr, "a score in [0, 1)")
    need(0.0 < ex.iou_thr <= 1.0, "iou_thr", ex.iou_thr, "an IoU in (0, 1]")
    need(ex.calib_images >= 1, "calib_images", ex.calib_images, "calibrate on at least one image")
    need(ex.latency_repeats >= 1, "latency_repeats", ex.latency_repeats, "time at least one run")
    for key in ("max_map_drop", "int8_max_map_drop"):
        v = getattr(ex.gate, key)
        need(v >= 0.0, f"gate.{key}", v, "mAP points either way, 0 or more (0.5 is the default)")
    for key in ("min_mask_iou", "int8_min_mask_iou"):
        v = getattr(ex.gate, key)
        need(0.0 <= v <= 1.0, f"gate.{key}", v, "an IoU in [0, 1]")
    t = ex.tensorrt
    need(1 <= t.min_batch <= t.opt_batch <= t.max_batch, "tensorrt.min_batch/opt_batch/max_batch",
         (t.min_batch, t.opt_batch, t.max_batch), "1 <= min_batch <= opt_batch <= max_batch")
    need(t.workspace_gb > 0, "tensorrt.workspace_gb", t.workspace_gb, "more than 0 GB")
    if ex.format is ExportFormat.tensorrt and ex.tensorrt.int8 and not ex.int8:
        raise ConfigError("export.tensorrt.int8=true builds the engine from the INT8 (QDQ) model, which needs "
                          "export.int8=true too (or use export=tensorrt_int8)")


def check_stage(config: Any) -> None:
    """:func:`check` of a stage's typed view (``Stage.check``)."""
    check(config.export)
