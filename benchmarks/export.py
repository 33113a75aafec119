"""Export latency and accuracy table (issue #5): PyTorch eager vs ONNX Runtime FP32 vs INT8.

::

    .venv/bin/python benchmarks/export.py quickstart --store /tmp/qs/store     # trains once, then cached
    .venv/bin/python benchmarks/export.py bccd --store /tmp/bccd/store --epochs 12 --size 416,320

Runs ``cvops`` with ``export=onnx_int8`` and ``export.latency_repeats`` (default
50) on the recipe (training and curating it first when the store does not have
them), then prints the stage's latency table and the ratios the issue sets
goals for: ONNX Runtime <= 0.5x PyTorch eager at <= 0.5 mAP points drop; INT8
<= 0.35x at <= 2 points (CPU, batch 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(recipe_args: list, store: Path, repeats: int) -> None:
    env = {**os.environ, "CVOPS_STORE": str(store), "WANDB_MODE": "offline"}
    run_dir = store.parent / f"export-bench-{int(time.time())}"
    args = [sys.executable, "-m", "cvops", *recipe_args, "export=onnx_int8", f"export.latency_repeats={repeats}",
            "stages=[curate,train,evaluate,export]", "tracker=none", f"hydra.run.dir={run_dir}"]
    t0 = time.time()
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"cvops failed ({r.returncode}):\n{r.stderr[-3000:]}")
    st = json.loads((run_dir / "run.json").read_text())["stages"]
    ex = st["export"]
    m = ex["metrics"]
    print(f"{' '.join(recipe_args)}: export {ex['status']} in {ex['seconds']:.0f} s (whole command {time.time() - t0:.0f} s)")
    print(Path(ex["artifacts"]["latency"]).read_text())
    print(f"ONNX Runtime / PyTorch (batch 1): {m['onnx_ms'] / m['torch_ms']:.2f}x at {m['map_drop']:.2f} mAP points drop "
          f"(goal <= 0.5x at <= 0.5)")
    if m.get("int8_ms"):
        print(f"INT8 / PyTorch (batch 1): {m['int8_ms'] / m['torch_ms']:.2f}x at {m['int8_map_drop']:.2f} points drop "
              f"(goal <= 0.35x at <= 2)")
    print(f"gate: {m['gate']}; test mAP PyTorch {m['torch_map']:.4f}, ONNX {m['onnx_map']:.4f}, INT8 {m['int8_map']:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["quickstart", "bccd"])
    ap.add_argument("--store", type=Path, required=True, help="artifact store (kept: a rerun reuses the training)")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=12, help="bccd: training epochs (cpu_smoke schedule)")
    ap.add_argument("--size", default="416,320", help="bccd: model.image_size as W,H")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    a = ap.parse_args()
    if a.what == "quickstart":
        run(["recipe=quickstart"], a.store, a.repeats)
    else:
        run(["recipe=bccd", f"data.path={a.data / 'bccd_yolo/Yolov5/dataset/data.yaml'}", "train=cpu_smoke",
             f"train.max_epochs={a.epochs}", f"train.val_interval={max(1, a.epochs // 3)}",
             f"model.image_size=[{a.size}]"], a.store, a.repeats)


if __name__ == "__main__":
    main()
