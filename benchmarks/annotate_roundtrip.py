"""Label Studio round trip: push a review batch, annotate every task, load it back.

    .venv/bin/python benchmarks/annotate_roundtrip.py [--samples 50] [--size 640x480] [--out roundtrip.json]
    .venv/bin/python benchmarks/annotate_roundtrip.py --url http://host:8080 --key-env LABEL_STUDIO_API_KEY

Starts Label Studio from ``.venv-label-studio`` (``./install.sh --with-label-studio``) on a free port
with SQLite in a temporary folder, unless ``--url`` names a running one. Builds a review dataset of
``--samples`` generated images with five prelabels each (as the monitor leaves it), then times
:func:`cvops.annotate.labelstudio.push` and :func:`cvops.annotate.labelstudio.load` as the command calls
them. The annotator (one submitted annotation per task through the REST API) is timed apart and not
part of the round trip. Goal (issue #27): push + load of 50 samples in at most 10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--size", default="640x480", help="image width x height")
    ap.add_argument("--url", default=None, help="a running Label Studio (default: start one)")
    ap.add_argument("--key-env", default="LABEL_STUDIO_API_KEY", help="with --url: the variable with its key")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))

    import cv2
    import httpx
    import numpy as np

    from cvops.annotate import labelstudio as ls
    from cvops.fo import connect

    tmp = Path(tempfile.mkdtemp(prefix="cvops-annotate-bench-"))
    server = None
    if args.url is None:
        from helpers.labelstudio import LabelStudio

        t0 = time.perf_counter()
        server = LabelStudio(tmp)
        print(f"Label Studio started in {time.perf_counter() - t0:.1f} s at {server.url}")
        url, key = server.url, server.key
        os.environ["CVOPS_BENCH_LS_KEY"] = key
        key_env = "CVOPS_BENCH_LS_KEY"
    else:
        url, key_env = args.url, args.key_env
        key = os.environ[key_env]
    fo = connect()
    name = f"bench-{uuid.uuid4().hex[:8]}-review"
    classes = ["circle", "square", "triangle"]
    rng = np.random.default_rng(0)
    try:
        ds = fo.Dataset(name, persistent=True)
        samples = []
        for i in range(args.samples):
            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            path = tmp / f"{i:04d}.jpg"
            cv2.imwrite(str(path), img)
            s = fo.Sample(filepath=str(path), tags=["needs_review"])
            s["prelabels"] = fo.Detections(detections=[
                fo.Detection(label=classes[k % 3], bounding_box=[0.05 + 0.18 * k, 0.1, 0.15, 0.3],
                             confidence=0.4 + 0.1 * k) for k in range(5)])
            samples.append(s)
        ds.add_samples(samples, progress=False)
        kw = dict(masks=False, duplicate_iou=0.7, url=url, key_env=key_env)
        t0 = time.perf_counter()
        pushed = ls.push(name, classes, confidence=0.3, **kw)
        push_s = time.perf_counter() - t0
        again = ls.push(name, classes, confidence=0.3, **kw)
        http = httpx.Client(base_url=url, headers={"Authorization": f"Token {key}"}, timeout=30)
        t0 = time.perf_counter()
        tasks = http.get("/api/tasks", params={"project": pushed["project"], "fields": "all",
                                               "page_size": 10_000}).json()["tasks"]
        for t in tasks:
            res = t["predictions"][0]["result"]
            res[0]["value"]["x"] += 1.0
            http.post(f"/api/tasks/{t['id']}/annotations", json={"result": res}).raise_for_status()
        annotator_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = ls.load(name, classes, **kw)
        load_s = time.perf_counter() - t0
        result = {"samples": args.samples, "image_size": [w, h], "push_s": round(push_s, 2),
                  "load_s": round(load_s, 2), "round_trip_s": round(push_s + load_s, 2),
                  "second_push_new_tasks": again["pushed"], "annotator_s": round(annotator_s, 2),
                  "finished": loaded["finished"], "goal_s": 10.0}
        print(json.dumps(result, indent=1))
        assert loaded["finished"] == args.samples and again["pushed"] == 0, (loaded, again)
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
