"""Startup benchmark: whole-process wall time of the ``cvops`` command.

    .venv/bin/python benchmarks/startup.py [--repeats 9] [--out startup.json] [--skip-rerun]

(a) ``cvops recipe=quickstart --cfg job``: compose and print the spec.
(b) a fully cached quickstart rerun: the quickstart (small data, one epoch) is
    run once into a temporary store, then rerun; every stage must report
    ``cached``.

Each figure is the median of ``--repeats`` runs of the console script next to
this interpreter, timed from the parent (process start to exit, interpreter
start-up and imports included). Both are timed twice, alternating run by run: as
a user reruns a command (its composition comes from the compose cache,
:mod:`cvops.composecache`) and with ``CVOPS_COMPOSE_CACHE=0`` (Hydra composes, as
on the first run after an edit); and, in the same alternation, the bare import
floor ``python -c "import hydra, omegaconf, yaml"``. The goal (issue #26) is a
ratio, so that it holds on any machine: each figure at most 2.0x the floor.
The quickstart's FiftyOne database is a private mongod on a free port unless
FIFTYONE_DATABASE_URI is set (the user's default database is never touched).
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
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
#: The quickstart, shrunk so that the one uncached run takes about a minute on 2 cores.
SMALL = ("recipe=quickstart", "data.synthetic.num_images=40", "data.synthetic.videos=1",
         "data.synthetic.video_frames=12", "model.image_size=[128,128]", "train.max_epochs=1", "tracker=none",
         "export.calib_images=8", "export.latency_repeats=3", "monitor.window=60")
STAGES = ("curate", "train", "evaluate", "export", "monitor")
#: each figure over the import floor (python -c "import hydra, omegaconf, yaml"), at most
GOAL_RATIO = 2.0
FLOOR = ("-c", "import hydra, omegaconf, yaml")


def _cvops() -> str:
    exe = Path(sys.executable).parent / "cvops"
    return str(exe) if exe.is_file() else shutil.which("cvops") or sys.exit("no cvops console script found")


def _time(cmd: List[str], cwd: Path, env: Dict[str, str], repeats: int) -> Dict[str, Dict[str, object]]:
    """``cached`` (the compose cache on, warmed), ``composed`` (off) and ``floor`` (the bare import of Hydra,
    OmegaConf and PyYAML), alternated run by run; each with its ratio to the floor's median."""
    runs = {"cached": (cmd, env), "composed": (cmd, {**env, "CVOPS_COMPOSE_CACHE": "0"}),
            "floor": ([sys.executable, *FLOOR], env)}
    secs: Dict[str, List[float]] = {k: [] for k in runs}
    for c, e in runs.values():  # warm the page cache, the .pyc files and the compose cache
        subprocess.run(c, cwd=cwd, env=e, capture_output=True, check=True)
    for _ in range(repeats):
        for k, (c, e) in runs.items():
            t0 = time.perf_counter()
            r = subprocess.run(c, cwd=cwd, env=e, capture_output=True, text=True)
            secs[k].append(time.perf_counter() - t0)
            if r.returncode != 0:
                sys.exit(f"{' '.join(c)} failed ({r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    floor = statistics.median(secs["floor"])
    return {k: {"median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3), "max_s": round(max(v), 3),
                "ratio": round(statistics.median(v) / floor, 2), "runs": len(v)} for k, v in secs.items()}


def _statuses(workdir: Path) -> Dict[str, str]:
    newest = max(workdir.glob("outputs/**/run.json"), key=lambda p: p.stat().st_mtime)
    return {s: v["status"] for s, v in json.loads(newest.read_text())["stages"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", type=Path, help="write the figures as JSON here too")
    ap.add_argument("--skip-rerun", action="store_true", help="only (a): no quickstart run, no database")
    args = ap.parse_args()

    cvops = _cvops()
    tmp = Path(tempfile.mkdtemp(prefix="cvops-startup-"))
    # as on a user's machine: Python caches compiled modules (a sandbox or CI image may set
    # PYTHONDONTWRITEBYTECODE, which makes every process compile cvops from source again)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
           "CVOPS_STORE": str(tmp / "store"), "CVOPS_CACHE_DIR": str(tmp / "cache"), "WANDB_MODE": "offline",
           "FIFTYONE_DO_NOT_TRACK": "true"}
    mongod = None
    results: Dict[str, Dict[str, Dict[str, object]]] = {}
    try:
        results["cfg_job"] = _time([cvops, "recipe=quickstart", "--cfg", "job"], tmp, env, args.repeats)
        if not args.skip_rerun:
            if "FIFTYONE_DATABASE_URI" not in env:
                sys.path.insert(0, str(ROOT / "tests"))
                from helpers.mongo import PrivateMongod

                mongod = PrivateMongod(tmp / "mongo")
                env["FIFTYONE_DATABASE_URI"] = mongod.uri
            t0 = time.perf_counter()
            first = subprocess.run([cvops, *SMALL], cwd=tmp, env=env, capture_output=True, text=True, timeout=1800)
            if first.returncode != 0:
                sys.exit(f"the first quickstart run failed:\n{first.stdout[-3000:]}{first.stderr[-3000:]}")
            print(f"first (uncached) small quickstart run: {time.perf_counter() - t0:.1f} s")
            results["cached_rerun"] = _time([cvops, *SMALL], tmp, env, args.repeats)
            statuses = _statuses(tmp)
            if [statuses.get(s) for s in STAGES] != ["cached"] * len(STAGES):
                sys.exit(f"the rerun was not fully cached: {statuses}")
    finally:
        if mongod is not None:
            mongod.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{'command':40s} {'composition':12s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'x floor':>8s}")
    labels = {"cfg_job": "cvops recipe=quickstart --cfg job", "cached_rerun": "cvops recipe=quickstart (all cached)"}
    for key, by in results.items():
        for how, r in by.items():
            label = f"python {' '.join(FLOOR)!s}"[:40] if how == "floor" else labels[key]
            print(f"{label:40s} {how:12s} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['max_s']:7.3f} "
                  f"{r['ratio']:8.2f}")
    print(f"goal: each cvops figure at most {GOAL_RATIO}x the floor measured beside it")
    summary = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "repeats": args.repeats,
               "commands": {k: labels[k] for k in results}, "goal_ratio": GOAL_RATIO, "results": results}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
