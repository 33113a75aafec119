"""cvops vs Ultralytics YOLO on the same split, the same CPU budget and the same evaluator (issue #30).

    .venv/bin/python benchmarks/peers.py [--minutes 20] [--out peers.json] [--imgsz 320] [cvops overrides...]
    .venv/bin/python benchmarks/peers.py --minutes 10 data=voc data.path=/data/VOCdevkit/VOC2012 project=voc

1. **The split**: cvops curates the dataset (default ``recipe=bccd``: the BCCD set in ``../shared/data``;
   any source cvops reads, by overrides) and the curated train/val/test split is written in the format
   Ultralytics reads (YOLO txt, ``data.yaml``), image files linked, not copied.
2. **Training, same wall-clock budget**: cvops with ``train.max_minutes`` (the schedule laid over the
   budget) and Ultralytics with ``time=`` (hours), both from scratch (no weights can be downloaded:
   ``yolo11n.yaml``), at the same input size, on this machine's cores, one after the other.
3. **Scoring, one evaluator**: both models predict the curated test images (score >= 0.001, at most 100
   detections an image) and pycocotools' COCOeval scores both result files against the curated COCO test
   split. Each model's ONNX graph is timed under ONNX Runtime at batch 1 on one random input, both in this
   process with the same session options, in alternating rounds (medians of 100 runs); cvops' whole
   ``predict`` (letterbox, graph, boxes back in pixels) is ``predict_ms`` beside it.

Ultralytics runs in its own venv (``--peer-venv``, default ``.venv-peers``), created on first use:
``pip install torch==2.14.1 torchvision==0.29.1 ultralytics onnx onnxruntime`` (this machine's torch
2.13.0 CPU build does not match PyPI's torchvision). Writes ``peers.json`` (per tool: mAP, mAP50, per-class
AP, train seconds, test image ids, ONNX latency) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
PEER_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "ultralytics", "onnx", "onnxruntime"]


def cvops(args: List[str], cwd: Path, env: Dict[str, str]) -> Dict[str, Any]:
    """``python -m cvops <args>``; the run's run.json."""
    before = set(cwd.glob("outputs/**/run.json"))
    r = subprocess.run([sys.executable, "-m", "cvops", *args], cwd=cwd, env=env, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print("\n".join(line for line in r.stdout.splitlines() if line.startswith("  ")), flush=True)
    if r.returncode != 0:
        raise SystemExit(f"cvops {' '.join(args)} failed:\n{r.stdout[-3000:]}")
    new = sorted(set(cwd.glob("outputs/**/run.json")) - before, key=lambda p: p.stat().st_mtime)
    return json.loads(new[-1].read_text())


def yolo_split(curate: Dict[str, Any], out: Path) -> Path:
    """The curated split as a YOLO dataset (links to the curated images); its data.yaml."""
    arts = curate["artifacts"]
    names: List[str] = []
    for split, key in (("train", "coco_train"), ("val", "coco_val"), ("test", "coco_test")):
        coco = json.loads(Path(arts[key]).read_text())
        names = [c["name"] for c in coco["categories"]]
        index = {c["id"]: k for k, c in enumerate(coco["categories"])}
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        by_image: Dict[int, List[str]] = {}
        for a in coco["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        for im in coco["images"]:
            src = Path(im["file_name"])
            stem = f"{im['id']:06d}_{src.stem}"
            link = out / "images" / split / f"{stem}{src.suffix}"
            if not link.exists():
                link.symlink_to(src)
            w, h = im["width"], im["height"]
            lines = []
            for a in by_image.get(im["id"], []):
                x, y, bw, bh = a["bbox"]
                if bw <= 0 or bh <= 0:
                    continue
                lines.append(f"{index[a['category_id']]} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} "
                             f"{bw / w:.6f} {bh / h:.6f}")
            (out / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    yaml = out / "data.yaml"
    yaml.write_text(f"path: {out}\ntrain: images/train\nval: images/val\ntest: images/test\n"
                    f"names: {json.dumps(dict(enumerate(names)))}\n")
    return yaml


def peer_venv(path: Path) -> Path:
    py = path / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import ultralytics, torchvision, onnxruntime"],
                                        capture_output=True).returncode == 0
    if not ok:
        print(f"peer venv {path}: installing {' '.join(PEER_PACKAGES)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEER_PACKAGES],
                       check=True)
    return py


PEER_SCRIPT = r'''
import csv, json, sys, time
from pathlib import Path
from ultralytics import YOLO
cfg = json.loads(sys.argv[1])
out = Path(cfg["out"])
t0 = time.time()
model = YOLO("yolo11n.yaml")
model.train(data=cfg["data"], imgsz=cfg["imgsz"], time=cfg["minutes"] / 60.0, epochs=10000, device="cpu",
            workers=cfg["workers"], pretrained=False, project=str(out), name="train", exist_ok=True, plots=False,
            verbose=False, amp=False)
train_s = time.time() - t0
best = out / "train" / "weights" / "best.pt"
model = YOLO(str(best))
test = json.loads(Path(cfg["coco_test"]).read_text())
names = model.names
cat = {c["name"]: c["id"] for c in test["categories"]}
dets = []
for im in test["images"]:
    r = model.predict(im["file_name"], imgsz=cfg["imgsz"], conf=0.001, iou=0.6, max_det=100, device="cpu",
                      verbose=False)[0]
    for (x1, y1, x2, y2), s, k in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist()):
        dets.append({"image_id": im["id"], "category_id": cat[names[int(k)]], "bbox": [x1, y1, x2 - x1, y2 - y1],
                     "score": s})
onnx = model.export(format="onnx", imgsz=cfg["imgsz"], dynamic=False, simplify=False, opset=17)
rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(open(out / "train" / "results.csv"))]
epochs = int(float(rows[-1]["epoch"])) if rows else None
json.dump({"dets": dets, "train_s": train_s, "epochs": epochs, "onnx": str(onnx)},
          open(out / "peer.json", "w"))
'''


def graph_latency(onnx: Dict[str, Path], imgsz: int, rounds: int = 5, runs: int = 20) -> Dict[str, float]:
    """Median ms of each ONNX graph's ``session.run`` at batch 1 on one random (1, 3, imgsz, imgsz) input: the
    graphs alone (no decoding, resizing or drawing), both in this process with the same ONNX Runtime and
    session options, in alternating rounds so that the machine's load falls on both alike."""
    import numpy as np
    import onnxruntime as ort

    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    sessions = {}
    for tool, path in onnx.items():
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(5):
            sess.run(None, feed)
        sessions[tool] = (sess, feed)
    times: Dict[str, List[float]] = {tool: [] for tool in onnx}
    for _ in range(rounds):
        for tool, (sess, feed) in sessions.items():
            for _ in range(runs):
                t = time.perf_counter()
                sess.run(None, feed)
                times[tool].append((time.perf_counter() - t) * 1000)
    return {tool: round(statistics.median(ts), 2) for tool, ts in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="the training budget of each tool (wall clock)")
    ap.add_argument("--imgsz", type=int, default=320, help="input size of both models")
    ap.add_argument("--out", type=Path, default=Path("peers.json"))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--peer-venv", type=Path, default=ROOT / ".venv-peers")
    ap.add_argument("--skip-peer", action="store_true", help="cvops only")
    args, overrides = ap.parse_known_args()
    overrides = overrides or ["recipe=bccd"]
    if not any(o.startswith("recipe=") for o in overrides):
        overrides = ["recipe=bccd", *overrides]
    work = (args.work or Path(tempfile.mkdtemp(prefix="cvops-peers-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CVOPS_STORE": str(work / "store"), "WANDB_MODE": "offline"}
    size = f"[{args.imgsz},{args.imgsz}]"
    common = [*overrides, f"model.image_size={size}", "tracker=none"]
    cwd = ROOT  # recipes name data relative to the checkout (bccd: ../shared/data)

    print(f"1. curate ({' '.join(overrides)})", flush=True)
    run = cvops([*common, "stages=[curate]"], cwd, env)
    curate = run["stages"]["curate"]
    test_coco = Path(curate["artifacts"]["coco_test"])
    test = json.loads(test_coco.read_text())
    data_yaml = yolo_split(curate, work / "yolo")

    from cvops.detector.coco import coco_eval, to_coco
    from cvops.detector.runtime import OnnxDetector

    results: Dict[str, Any] = {"budget_minutes": args.minutes, "imgsz": args.imgsz, "overrides": overrides,
                               "test_images": [im["id"] for im in test["images"]], "tools": {}}

    print(f"2. cvops, {args.minutes} min", flush=True)
    t0 = time.time()
    run = cvops([*common, f"train.max_minutes={args.minutes}", "train.max_epochs=10000", "export.score_thr=0.001",
                 "export.int8=false", "stages=[curate,train,export]"], cwd, env)
    train_s = time.time() - t0
    onnx = Path(run["stages"]["export"]["artifacts"]["onnx"])
    det = OnnxDetector(onnx)
    by_name = {c["name"]: c["id"] for c in test["categories"]}
    cat_ids = [by_name[c] for c in det.classes]
    import cv2

    dets: List[Dict[str, Any]] = []
    for im in test["images"]:
        dets += to_coco(det.predict([cv2.imread(im["file_name"])])[0], im["id"], cat_ids)
    stats, _ = coco_eval(test_coco, dets)
    x = cv2.imread(test["images"][0]["file_name"])
    ts = []
    for k in range(33):
        t = time.perf_counter()
        det.predict([x])
        if k >= 3:
            ts.append((time.perf_counter() - t) * 1000)
    results["tools"]["cvops"] = {**stats, "train_s": run["stages"]["train"]["metrics"].get("seconds", round(train_s, 1)),
                                 "epochs": run["stages"]["train"]["metrics"].get("epochs"),
                                 "predict_ms": round(statistics.median(ts), 2), "onnx": str(onnx)}

    if not args.skip_peer:
        print(f"3. Ultralytics YOLO (yolo11n.yaml, from scratch), {args.minutes} min", flush=True)
        py = peer_venv(args.peer_venv)
        cfg = {"data": str(data_yaml), "imgsz": args.imgsz, "minutes": args.minutes, "workers": 2,
               "coco_test": str(test_coco), "out": str(work / "ultralytics")}
        r = subprocess.run([str(py), "-c", PEER_SCRIPT, json.dumps(cfg)], cwd=work, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise SystemExit(f"Ultralytics failed:\n{r.stdout[-4000:]}")
        peer = json.loads((work / "ultralytics" / "peer.json").read_text())
        stats, _ = coco_eval(test_coco, peer["dets"])
        results["tools"]["ultralytics"] = {**stats, "train_s": round(peer["train_s"], 1), "epochs": peer.get("epochs"),
                                           "onnx": peer["onnx"]}
    for tool, ms in graph_latency({t: Path(m["onnx"]) for t, m in results["tools"].items()}, args.imgsz).items():
        results["tools"][tool]["onnx_ms"] = ms

    print("\n| tool | epochs | test mAP50 | test mAP | train s | ONNX graph ms (batch 1) |\n|---|---:|---:|---:|---:|---:|")
    for tool, m in results["tools"].items():
        print(f"| {tool} | {m.get('epochs')} | {m['mAP50']:.3f} | {m['mAP']:.3f} | {m['train_s']} | {m['onnx_ms']} |")
    args.out.write_text(json.dumps(results, indent=1))
    print(f"-> {args.out.absolute()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
