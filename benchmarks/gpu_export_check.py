"""GPU host check of the TensorRT path: build, run, parity, latency, stale-engine rebuild.

Run on a machine with a CUDA GPU and TensorRT 10+ (``pip install -e '.[tensorrt]'``)::

    .venv/bin/python benchmarks/gpu_export_check.py                  # a small untrained RTMDet, made here
    .venv/bin/python benchmarks/gpu_export_check.py --export-dir outputs/store/export/<fp>   # a real export

It prints one JSON summary and exits non-zero when a check fails:
FP16 and INT8 (from the QDQ model) engines build with the recipe's profile,
their detections match ONNX Runtime's on the same tensors (FP16: same labels,
boxes within 1 px for boxes with score >= 0.3; INT8: >= 90% of boxes matched),
an engine whose fingerprint names another TensorRT version is rebuilt, and
batch 1 / 8 latencies of ONNX Runtime (CPU) and TensorRT are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _match_rate(a, b, score: float = 0.3) -> float:
    from cvops.detector.runtime import box_iou

    ka, kb = a.scores >= score, b.scores >= score
    if not ka.any():
        return 1.0
    if not kb.any():
        return 0.0
    ba, bb = a.boxes[ka], b.boxes[kb]
    iou = box_iou(ba, bb) * (a.labels[ka][:, None] == b.labels[kb][None])
    return float((iou.max(1) >= 0.5).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export-dir", type=Path, help="an export artifact dir (model.onnx, model_int8_trt.onnx)")
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()

    from cvops.detector import tensorrt as trt
    from cvops.detector.runtime import OnnxDetector, latency, split_outputs

    why = trt.unavailable()
    if why:
        print(json.dumps({"ok": False, "reason": why}))
        return 2
    work = Path(tempfile.mkdtemp(prefix="cvops-gpu-"))
    if args.export_dir:
        fp32 = args.export_dir / "model.onnx"
    else:
        from helpers.tiny_model import make_onnx

        fp32 = make_onnx(work, size=(320, 320), score_thr=0.05)
    ort = OnnxDetector(fp32)
    pre = ort.preprocess
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (rng.integers(200, 480), rng.integers(200, 640), 3), dtype=np.uint8) for _ in range(8)]
    int8_src = args.export_dir / "model_int8_trt.onnx" if args.export_dir else None
    if int8_src is None or not int8_src.exists():
        import cv2

        from cvops.export.quantize import quantize

        files = []
        for i, im in enumerate(images):
            files.append(str(work / f"calib_{i}.png"))
            cv2.imwrite(files[-1], im)
        int8_src = work / "model_int8_trt.onnx"
        quantize(fp32, int8_src, files, pre, target="tensorrt")

    summary: dict = {"ok": True, "machine": trt.machine_fingerprint(), "checks": {}}
    tensor1, scales1 = pre.batch(images[:1])
    tensor8, scales8 = pre.batch(images)
    sizes = [(im.shape[1], im.shape[0]) for im in images]
    ref = split_outputs(ort.run(tensor8), scales8, sizes, pre)
    summary["latency_ms"] = {"onnxruntime_cpu": {"b1": latency(lambda: ort.run(tensor1), repeats=10)["median_ms"],
                                                 "b8": latency(lambda: ort.run(tensor8), repeats=5)["median_ms"]}}
    for name, src, fp16, int8, need in (("fp16", fp32, True, False, 1.0), ("int8", int8_src, True, True, 0.9)):
        engine = work / f"model_{name}.engine"
        info = trt.build_engine(src, engine, input_shape=[3, pre.height, pre.width], fp16=fp16, int8=int8,
                                workspace_gb=2.0, min_batch=1, opt_batch=1, max_batch=8,
                                timing_cache=work / "timing.cache")
        det = trt.TrtDetector(engine, src)
        got = split_outputs(det.run(tensor8), scales8, sizes, pre)
        rates = [min(_match_rate(r, g), _match_rate(g, r)) for r, g in zip(ref, got)]
        ok = min(rates) >= need
        summary["checks"][f"{name}_parity"] = {"ok": ok, "min_match_rate": round(min(rates), 3),
                                               "build_seconds": info["build_seconds"]}
        summary["latency_ms"][f"tensorrt_{name}"] = {"b1": latency(lambda: det.run(tensor1), repeats=args.repeats)["median_ms"],
                                                    "b8": latency(lambda: det.run(tensor8), repeats=args.repeats)["median_ms"]}
        summary["ok"] &= ok
    # an engine "from another machine": its fingerprint names another TensorRT version
    engine = work / "model_fp16.engine"
    meta = json.loads(engine.with_suffix(".json").read_text())
    meta["tensorrt"] = "0.0.0"
    engine.with_suffix(".json").write_text(json.dumps(meta))
    det = trt.TrtDetector(engine, fp32)
    rebuilt = bool(det.rebuilt) and json.loads(engine.with_suffix(".json").read_text())["tensorrt"] != "0.0.0"
    summary["checks"]["stale_engine_rebuilt"] = {"ok": rebuilt, "why": det.rebuilt}
    summary["ok"] &= rebuilt
    print(json.dumps(summary, indent=1))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
