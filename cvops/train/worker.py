"""``cvops train-worker``: one more machine of a multi-node training (torchrun's static rendezvous).

Node 0 runs the train stage as usual, with ``train.launcher=pytorch train.nnodes=N``: it builds the
training config in the store (``<store>/train/<fingerprint>/config.py``), starts torchrun as node 0 and,
when training ends, commits the artifact. Every other machine runs the same command line as a worker::

    cvops recipe=X stages=[curate,train] train.launcher=pytorch train.nnodes=2 train.master_addr=10.0.0.1  # node 0
    cvops train-worker recipe=X train.launcher=pytorch train.nnodes=2 train.master_addr=10.0.0.1 train.node_rank=1

The worker composes the same recipe, so it computes the same train fingerprint (``node_rank``,
``master_addr`` and ``master_port`` are not part of it), waits until node 0 has written that build's
config, and joins torchrun as node ``train.node_rank``. It writes nothing to the store: rank 0 saves the
checkpoints, node 0 commits. The store is a folder every node sees, or ``s3://...``: then node 0 publishes
the config in the bucket (``train/<fp>.pending/config.py``) and the worker downloads it and the curate
artifact into its cache, which must be the same folder as node 0's (``paths.cache``: the paths in the
config and in the curated COCO files are absolute).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import List


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(prog="cvops train-worker", description=__doc__.split("\n\n")[0])
    ap.add_argument("--wait", type=float, default=3600.0, help="seconds to wait for node 0's training config")
    args, overrides = ap.parse_known_args(argv)
    from cvops.artifacts import open_store
    from cvops.config import ConfigError, compose_config, preflight
    from cvops.runner import fingerprints
    from cvops.schema import Launcher

    try:
        preflight(overrides)
        cfg = compose_config(overrides)
        train = cfg.train
        if Launcher(train.launcher) is not Launcher.pytorch or int(train.nnodes) < 2:
            raise ConfigError("cvops train-worker joins a multi-node training: give the node 0 command's "
                              "train.launcher=pytorch and train.nnodes=N (N >= 2)")
        if not 1 <= int(train.node_rank) < int(train.nnodes):
            raise ConfigError(f"train.node_rank={train.node_rank}: a worker is node 1..{int(train.nnodes) - 1} "
                              f"(node 0 runs the train stage: cvops recipe=... without train-worker)")
    except ConfigError as e:
        print(f"cvops: error: {e}", file=sys.stderr)
        return 2
    fps = fingerprints(cfg)
    fp = fps["train"]["fingerprint"]
    store = open_store(cfg.paths)
    build = store.dir("train", fp)
    config = build / "config.py"
    print(f"cvops train-worker: node {train.node_rank} of {train.nnodes}, train {fp}: waiting for {config}",
          flush=True)
    deadline = time.monotonic() + args.wait
    while True:
        if store.is_complete("train", fp):  # committed: its training is over (config.py is in it too)
            print(f"cvops: error: train {fp} is already built ({store}/train/{fp}); nothing to join", file=sys.stderr)
            return 2
        if store.pending("train", fp, "config.py", config):
            break
        if time.monotonic() > deadline:
            print(f"cvops: error: no training config at {config} after {args.wait:.0f} s: is node 0 running "
                  "the same command (and the same paths.store)?", file=sys.stderr)
            return 2
        time.sleep(0.5)
    if store.get("curate", fps["curate"]["fingerprint"]) is None:  # the data, into this machine's cache (s3://)
        print(f"cvops: error: no curate artifact for this config in {store}", file=sys.stderr)
        return 2
    from cvops.train.stage import torchrun_command

    cmd = torchrun_command(config, train, node_rank=int(train.node_rank))
    print("cvops train-worker: " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode
