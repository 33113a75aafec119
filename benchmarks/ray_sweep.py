"""A 4-job sweep on a 2-node Ray cluster against an S3 store, and the same sweep through joblib.

    .venv/bin/python benchmarks/ray_sweep.py [--out ray_sweep.json]

Starts an S3-compatible server (moto), a private mongod (the shared FiftyOne database) and a Ray cluster of
two nodes with one CPU each (``ray.cluster_utils.Cluster``, on this machine), then runs the shrunk quickstart
(``benchmarks/startup.py``) with ``stages=[curate,train,evaluate] train.lr=0.01,0.02,0.03,0.04``:

- ``hydra/launcher=ray`` joined to the cluster (one CPU per job: two jobs at a time), store ``s3://<bucket A>``;
- ``hydra/launcher=local_parallel`` (joblib, two processes), store ``s3://<bucket B>``;

each from an empty store, so both build curate once and train four times. Prints each wall time, their
ratio (issue #12 asks for it; on the same 2 cores Ray is not expected to be faster) and whether the two
leaderboards rank the same jobs the same way.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from startup import SMALL, _cvops  # noqa: E402

SWEEP = ("-m", *SMALL, "stages=[curate,train,evaluate]", "train.lr=0.01,0.02,0.03,0.04")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from helpers.mongo import PrivateMongod
    from helpers.s3 import S3Server

    tmp = Path(tempfile.mkdtemp(prefix="cvops-ray-bench-"))
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    os.environ["RAY_TMPDIR"] = ray_tmp
    s3 = S3Server()
    mongod = PrivateMongod(tmp / "mongo")
    os.environ.update(s3.env, FIFTYONE_DATABASE_URI=mongod.uri, WANDB_MODE="offline", FIFTYONE_DO_NOT_TRACK="true")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    out = {}
    try:
        def sweep(name: str, *launcher: str) -> float:
            work = tmp / name
            work.mkdir()
            env = {**os.environ, "CVOPS_STORE": f"s3://{s3.bucket()}/store", "CVOPS_CACHE_DIR": str(work / "cache")}
            t0 = time.perf_counter()
            r = subprocess.run([_cvops(), *SWEEP, *launcher], cwd=work, env=env, capture_output=True, text=True,
                               timeout=3600)
            secs = time.perf_counter() - t0
            if r.returncode != 0:
                sys.exit(f"{name} sweep failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
            board = next(work.glob("outputs/*/multirun/*/*/leaderboard.csv"))
            rows = list(csv.DictReader(open(board)))
            out[name] = {"wall_s": round(secs, 1), "ranking": [row["overrides"].split()[-1] for row in rows],
                         "statuses": [row["status"] for row in rows]}
            print(f"{name}: {secs:.1f} s  {out[name]['ranking']}", flush=True)
            return secs

        ray_s = sweep("ray", "hydra/launcher=ray", f"hydra.launcher.address={cluster.address}")
        joblib_s = sweep("joblib", "hydra/launcher=local_parallel")
        out["ray_over_joblib"] = round(ray_s / joblib_s, 3)
        out["same_ranking"] = out["ray"]["ranking"] == out["joblib"]["ranking"]
        print(json.dumps(out, indent=1))
    finally:
        cluster.shutdown()
        mongod.stop()
        s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
