"""Train benchmarks (issue #4).

    .venv/bin/python benchmarks/train.py overhead [--repeats 3] [--epochs 2]
    .venv/bin/python benchmarks/train.py quickstart
    .venv/bin/python benchmarks/train.py bccd [--epochs 12] [--size 416,320]

overhead    cvops' train stage vs raw mmdet on the identical resolved config and
            data: ``Runner.from_cfg(Config.fromfile(config.py)).train()`` in a
            fresh process, same settings; ratio of medians (goal <= 1.03).
quickstart  ``cvops recipe=quickstart`` end to end from an empty store: wall
            time of the train stage and the test mAP / mAP50 (goal mAP50 >= 0.5
            in <= 10 min on 2 CPU cores).
bccd        BCCD from ../shared/data with rtmdet_tiny on CPU: test mAP, mAP50
            and wall time after the schedule given on the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["project=benchtrain", "data.synthetic.num_images=80", "data.synthetic.videos=0", "tracker=none",
        "model.image_size=[256,256]", "train.val_interval=100"]


def _cvops(args, cwd, env):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cvops", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"cvops {' '.join(args)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return time.perf_counter() - t0


def overhead(repeats: int, epochs: int) -> None:
    # The raw side is timed like the stage is: from before torch/mmdet are imported to the end of training.
    raw_code = ("import sys, time\nt0 = time.perf_counter()\n"
                "from mmengine.config import Config\nfrom mmengine.runner import Runner\n"
                "import cvops.train.hooks\nfrom cvops.detector.checkpoint import allow_mmengine_checkpoints\n"
                "allow_mmengine_checkpoints()\ncfg = Config.fromfile(sys.argv[1]); cfg.work_dir = sys.argv[2]\n"
                "Runner.from_cfg(cfg).train(); print('TRAIN', time.perf_counter() - t0)\n")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CVOPS_STORE": f"{tmp}/store"}
        args = [*TINY, f"train.max_epochs={epochs}"]
        _cvops([*args, "stages=[curate]"], tmp, env)
        cv, raw = [], []
        for i in range(repeats):
            shutil.rmtree(Path(tmp, "store", "train"), ignore_errors=True)
            _cvops([*args, "stages=[train]"], tmp, env)
            (art,) = list(Path(tmp, "store", "train").glob("*/manifest.json"))
            cv.append(json.loads(art.read_text())["seconds"])
            r = subprocess.run([sys.executable, "-c", raw_code, str(art.parent / "config.py"), f"{tmp}/raw{i}"],
                               capture_output=True, text=True, cwd=tmp, env=env)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("TRAIN")]
            if not line:
                raise SystemExit(r.stderr[-4000:])
            raw.append(float(line[0].split()[1]))
    c, r_ = statistics.median(cv), statistics.median(raw)
    print(f"train stage (cvops: imports, config build, training, artifacts): {[round(x, 1) for x in cv]} s")
    print(f"raw mmdet (imports, Runner.from_cfg(config.py).train()):         {[round(x, 1) for x in raw]} s")
    print(f"overhead ratio (medians) = {c / r_:.3f} (goal <= 1.03)")


def quickstart() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CVOPS_STORE": f"{tmp}/store"}
        total = _cvops(["recipe=quickstart", "stages=[curate,train,evaluate]"], tmp, env)
        (run,) = list(Path(tmp).glob("outputs/quickstart/*/*/run.json"))
        st = json.loads(run.read_text())["stages"]
    ev, tr = st["evaluate"]["metrics"], st["train"]
    print(f"quickstart: curate {st['curate']['seconds']:.0f} s, train {tr['seconds']:.0f} s "
          f"({tr['metrics']['epochs']} epochs), evaluate {st['evaluate']['seconds']:.0f} s, total {total:.0f} s")
    print(f"quickstart test mAP {ev['mAP']:.3f}, mAP50 {ev['mAP50']:.3f} (goal >= 0.5), val mAP {ev['val_mAP']:.3f}; "
          f"FiftyOne mAP {ev['fiftyone_mAP']:.3f}")


def bccd(epochs: int, data: Path, size: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CVOPS_STORE": f"{tmp}/store"}
        args = ["recipe=bccd", f"data.path={data / 'bccd_yolo/Yolov5/dataset/data.yaml'}", "train=cpu_smoke",
                f"train.max_epochs={epochs}", f"train.val_interval={max(1, epochs // 3)}", f"model.image_size=[{size}]",
                "tracker=none", "stages=[curate,train,evaluate]"]
        total = _cvops(args, tmp, env)
        (run,) = list(Path(tmp).glob("outputs/bccd/*/*/run.json"))
        st = json.loads(run.read_text())["stages"]
    ev = st["evaluate"]["metrics"]
    print(f"BCCD rtmdet_tiny, cpu_smoke x {epochs} epochs at {size}: train {st['train']['seconds']:.0f} s, "
          f"total {total:.0f} s; test mAP {ev['mAP']:.3f}, mAP50 {ev['mAP50']:.3f}; per class {ev['per_class_AP']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=["overhead", "quickstart", "bccd"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--size", default="416,320", help="bccd: model.image_size as W,H")
    a = ap.parse_args()
    if a.which == "overhead":
        overhead(a.repeats, a.epochs)
    elif a.which == "quickstart":
        quickstart()
    else:
        bccd(a.epochs, a.data, a.size)


if __name__ == "__main__":
    main()
