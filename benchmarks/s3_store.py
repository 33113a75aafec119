"""The artifact store on S3: a cached quickstart rerun, and transfer throughput against raw s3fs.

    .venv/bin/python benchmarks/s3_store.py [--repeats 5] [--full] [--out s3_store.json]

Starts its own S3-compatible server (moto's server mode, on a free port) and a private mongod, then:

(a) runs the quickstart (shrunk as in ``benchmarks/startup.py``; ``--full``: the real one) with
    ``paths.store=s3://...`` and a fresh local cache, then times fully cached reruns from the same cache
    (the median of ``--repeats`` whole ``cvops`` processes). Goal (issue #12): < 2 s.
    Also timed once: the same rerun from an empty cache (another machine: every artifact downloaded and
    verified).
(b) the train artifact's files uploaded by the store's commit (sha256 of every file, upload, conditional
    manifest) and downloaded by its cache (manifest GET, download while hashing, verify) against raw ``s3fs``
    ``put``/``get`` of the same files (given as a list of keys, and as the folder: ``get(prefix,
    recursive=True)``, which lists it first), interleaved, best of ``--repeats``. Goal: >= 0.9x raw.
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
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from startup import SMALL, STAGES, _cvops  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--full", action="store_true", help="the real quickstart instead of the shrunk one")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from helpers.mongo import PrivateMongod
    from helpers.s3 import S3Server

    tmp = Path(tempfile.mkdtemp(prefix="cvops-s3-bench-"))
    s3 = S3Server()
    mongod = PrivateMongod(tmp / "mongo")
    os.environ.update(s3.env)
    url = f"s3://{s3.bucket()}/store"
    recipe = ["recipe=quickstart", "tracker=none"] if args.full else list(SMALL)
    env = {**os.environ, **s3.env, "CVOPS_STORE": url, "FIFTYONE_DATABASE_URI": mongod.uri, "WANDB_MODE": "offline",
           "FIFTYONE_DO_NOT_TRACK": "true"}
    cvops = _cvops()
    out = {}
    try:
        def run(cache: str) -> float:
            t0 = time.perf_counter()
            r = subprocess.run([cvops, *recipe], cwd=tmp, env={**env, "CVOPS_CACHE_DIR": str(tmp / cache)},
                               capture_output=True, text=True, timeout=3600)
            secs = time.perf_counter() - t0
            if r.returncode != 0:
                sys.exit(f"cvops failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
            newest = max(tmp.glob("outputs/**/run.json"), key=lambda p: p.stat().st_mtime)
            st = {s: v["status"] for s, v in json.loads(newest.read_text())["stages"].items()}
            return secs, st

        first, st = run("cache-a")
        print(f"first (uncached) quickstart against {url}: {first:.1f} s  {st}")
        reruns = []
        for _ in range(args.repeats):
            secs, st = run("cache-a")
            if [st.get(s) for s in STAGES] != ["cached"] * len(STAGES):
                sys.exit(f"the rerun was not fully cached: {st}")
            reruns.append(secs)
        cold, _ = run("cache-b")
        out["quickstart"] = {"full": args.full, "first_s": round(first, 2),
                             "cached_rerun_median_s": round(statistics.median(reruns), 3),
                             "cached_rerun_min_s": round(min(reruns), 3), "cached_rerun_max_s": round(max(reruns), 3),
                             "rerun_empty_cache_s": round(cold, 2), "goal_s": 2.0}
        print(json.dumps(out["quickstart"], indent=1))

        # (b) throughput on the train artifact's files
        from cvops.store.s3 import ObjectStore

        store = ObjectStore(url, {}, tmp / "cache-a")
        train = next((tmp / "cache-a" / "store").glob("*/store/train/*/manifest.json")).parent
        files = [p for p in train.rglob("*") if p.is_file() and p.name not in ("manifest.json", ".verified.json")]
        size = sum(p.stat().st_size for p in files)
        fs = store.fs
        ours_up, raw_up, ours_down, raw_down, raw_dir_down = [], [], [], [], []
        for i in range(args.repeats):
            src = tmp / f"src-{i}"
            shutil.copytree(train, src, ignore=shutil.ignore_patterns("manifest.json", ".verified.json"))
            fp = uuid.uuid4().hex[:16]
            # raw s3fs put of the same files
            keys = [f"{store.key}/raw/{fp}/{p.relative_to(src).as_posix()}" for p in sorted(src.rglob("*")) if p.is_file()]
            locs = [str(p) for p in sorted(src.rglob("*")) if p.is_file()]
            t0 = time.perf_counter()
            fs.put(locs, keys)
            raw_up.append(time.perf_counter() - t0)
            # the store's commit (hashes, upload, conditional manifest)
            with store.build("bench", fp) as b:
                shutil.copytree(src, b.dir, dirs_exist_ok=True)
                t0 = time.perf_counter()
                b.commit({"stage": "bench", "fingerprint": fp, "artifacts": {}})
                ours_up.append(time.perf_counter() - t0)
            # raw s3fs get vs the store's verified download into an empty cache
            dst = tmp / f"raw-{i}"
            dsts = [str(dst / k.split(f"/raw/{fp}/", 1)[1]) for k in keys]
            t0 = time.perf_counter()
            fs.get(keys, dsts)
            raw_down.append(time.perf_counter() - t0)
            t0 = time.perf_counter()  # the folder as a whole: one listing, then the files (as our manifest GET)
            fs.get(f"{store.key}/raw/{fp}/", str(tmp / f"rawdir-{i}") + "/", recursive=True)
            raw_dir_down.append(time.perf_counter() - t0)
            fresh = ObjectStore(url, {}, tmp / f"cache-dl-{i}")
            t0 = time.perf_counter()
            fresh.get("bench", fp)
            ours_down.append(time.perf_counter() - t0)
            shutil.rmtree(src)
        mb = size / 1e6
        out["throughput"] = {
            "files": len(files), "mb": round(mb, 1),
            "upload_store_mb_s": round(mb / min(ours_up), 1), "upload_raw_mb_s": round(mb / min(raw_up), 1),
            "upload_ratio": round(min(raw_up) / min(ours_up), 3),
            "download_store_mb_s": round(mb / min(ours_down), 1), "download_raw_mb_s": round(mb / min(raw_down), 1),
            "download_ratio": round(min(raw_down) / min(ours_down), 3),
            "download_raw_folder_mb_s": round(mb / min(raw_dir_down), 1),
            "download_ratio_vs_folder_get": round(min(raw_dir_down) / min(ours_down), 3), "goal_ratio": 0.9}
        print(json.dumps(out["throughput"], indent=1))
    finally:
        mongod.stop()
        s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
