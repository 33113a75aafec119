"""Foundation benchmarks (issue #2): how fast cvops composes, validates and reuses.

    .venv/bin/python benchmarks/foundation.py [--repeats 5]

1. `cvops recipe=quickstart --cfg job`: compose + validate + print (goal < 2 s).
2. A rerun where every stage is cached (goal < 2 s). The stages are the small
   test implementations of tests/helpers/stages.py (curate -> train ->
   evaluate), so this measures the runner itself: process start, Hydra,
   validation, fingerprints, store lookups and run.json.

Prints a table of median / min / max wall seconds over the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "tests" / "helpers" / "run_cvops.py"


def _time(cmd, cwd, env, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{r.stdout}\n{r.stderr}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CVOPS_STORE": f"{tmp}/store", "WANDB_MODE": "offline"}
        rows = []
        cfg = _time([sys.executable, "-m", "cvops", "recipe=quickstart", "--cfg", "job"], tmp, env, args.repeats)
        rows.append(("cvops recipe=quickstart --cfg job", cfg, 2.0))
        run = [sys.executable, str(HELPER), "recipe=quickstart", "stages=[curate,train,evaluate]"]
        _time(run, tmp, env, 1)  # build once
        cached = _time(run, tmp, env, args.repeats)
        rows.append(("rerun, every stage cached", cached, 2.0))
    print(f"{'benchmark':40s} {'median s':>9s} {'min s':>7s} {'max s':>7s}  goal")
    for name, t, goal in rows:
        med = statistics.median(t)
        print(f"{name:40s} {med:9.3f} {min(t):7.3f} {max(t):7.3f}  < {goal} s {'ok' if med < goal else 'MISSED'}")


if __name__ == "__main__":
    main()
