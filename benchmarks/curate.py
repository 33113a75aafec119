"""Curate benchmarks (issue #3).

    .venv/bin/python benchmarks/curate.py [--data ../shared/data] [--repeats 3]

1. BCCD (YOLO) curated end to end by cvops vs a raw FiftyOne import of the same
   files (``fo.Dataset.from_dir(..., dataset_type=fo.types.YOLOv5Dataset)``
   per split): wall-time ratio (goal <= 1.5 while doing far more).
2. Near-duplicate search on 1k, 2k, 4k, 8k generated images (10 % near copies):
   the multi-index search vs all pairs, and time / (n log2 n) to show growth.
3. Frames per second extracting ../shared/data/videos/car-detection.mp4
   (every frame decoded, written as JPEG, hashed).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _curate_once(data_yaml: Path, store: Path) -> float:
    from cvops.config import compose_config
    from cvops.runner import Runner

    cfg = compose_config([f"project=bench{uuid.uuid4().hex[:6]}", "data=yolo", f"data.path={data_yaml}",
                          "stages=[curate]", f"paths.store={store}", "curate.split.respect_source=true"])
    t0 = time.perf_counter()
    manifest = Runner(cfg, store.parent / "run").run()
    secs = time.perf_counter() - t0
    print("  curate phases (s):", manifest.data["stages"]["curate"]["metrics"]["seconds_by_phase"])
    return secs


def _raw_fiftyone(dataset_dir: Path, yaml_path: Path) -> float:
    import fiftyone as fo

    t0 = time.perf_counter()
    ds = fo.Dataset(f"bench-raw-{uuid.uuid4().hex[:6]}")
    for split in ("train", "val", "test"):
        ds.add_dir(dataset_dir=str(dataset_dir), dataset_type=fo.types.YOLOv5Dataset, split=split,
                   yaml_path=str(yaml_path), tags=split)
    secs = time.perf_counter() - t0
    n = len(ds)
    ds.delete()
    return secs, n


def bench_bccd(data: Path, repeats: int) -> None:
    from cvops.fo import connect

    connect()
    dataset_dir = data / "bccd_yolo" / "Yolov5" / "dataset"
    data_yaml = dataset_dir / "data.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        # FiftyOne's YOLOv5 importer needs resolvable split paths: a copy of data.yaml with relative ones
        fixed = Path(tmp) / "data.yaml"
        fixed.write_text(f"path: {dataset_dir}\ntrain: train/images\nval: valid/images\ntest: test/images\n"
                         "names: [Platelets, RBC, WBC]\n")
        cv, raw = [], []
        for i in range(repeats):
            cv.append(_curate_once(data_yaml, Path(tmp) / f"s{i}" / "store"))
            secs, n = _raw_fiftyone(dataset_dir, fixed)
            raw.append(secs)
    c, r = statistics.median(cv), statistics.median(raw)
    print(f"BCCD curate (cvops, 364 images: validate, normalise, dedup, split, export, FiftyOne): {c:.2f} s median")
    print(f"BCCD raw fo.Dataset.from_dir YOLOv5 (train+val+test, {n} images, import only):            {r:.2f} s median")
    print(f"ratio cvops / raw = {c / r:.2f} (goal <= 1.5)")


def bench_dedup() -> None:
    import cv2

    from cvops.curate.dedup import near_duplicates
    from cvops.curate.validate import phash

    rng = np.random.default_rng(0)
    print(f"{'n':>6s} {'index s':>9s} {'all-pairs s':>12s} {'index us/(n log2 n)':>20s} {'dups':>6s}")
    for n in (1000, 2000, 4000, 8000):
        base = n - n // 10
        hashes = []
        for i in range(base):
            small = rng.uniform(0, 255, (6, 8)).astype(np.float32)
            hashes.append(phash(cv2.resize(small, (96, 72), interpolation=cv2.INTER_CUBIC)))
        for i in range(n - base):  # near copies: a few flipped bits
            h = hashes[int(rng.integers(base))]
            for b in rng.choice(64, size=int(rng.integers(0, 4)), replace=False):
                h ^= 1 << int(b)
            hashes.append(h)
        t_index = float("inf")
        for _ in range(5):  # best of 5: the search is milliseconds, so noise matters
            t0 = time.perf_counter()
            dropped = near_duplicates(hashes, list(range(n)), 4)
            t_index = min(t_index, time.perf_counter() - t0)
        t0 = time.perf_counter()
        arr = np.array(hashes, dtype=np.uint64)
        pairs = 0
        for i in range(n):  # vectorised all-pairs baseline
            x = np.bitwise_xor(arr[i + 1:], arr[i])
            pairs += int((np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(1) <= 4).sum())
        t_all = time.perf_counter() - t0
        print(f"{n:6d} {t_index:9.3f} {t_all:12.3f} {1e6 * t_index / (n * math.log2(n)):20.3f} {len(dropped):6d}")


def bench_video(data: Path) -> None:
    from cvops.curate.sources.ledger import Ledger
    from cvops.curate.sources.video import read_video
    from cvops.curate.stage import _decode

    video = data / "videos" / "car-detection.mp4"
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger()
        t0 = time.perf_counter()
        items = read_video(video, "video", ledger, None, None, None)
        decoded = _decode(items, Path(tmp), ledger)
        secs = time.perf_counter() - t0
    print(f"video extraction {video.name}: {len(decoded)} frames in {secs:.2f} s = {len(decoded) / secs:.0f} frames/s "
          "(decode + JPEG write)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["bccd", "dedup", "video"], default=None)
    args = ap.parse_args()
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    if args.only in (None, "bccd"):
        bench_bccd(args.data, args.repeats)
    if args.only in (None, "dedup"):
        bench_dedup()
    if args.only in (None, "video"):
        bench_video(args.data)


if __name__ == "__main__":
    main()
