"""``cvops train-worker recipe=X train.launcher=pytorch train.nnodes=N train.node_rank=R ...``.

One more machine of a multi-node training: it composes the same recipe as node 0, waits for node 0's
training config of that train build and joins torchrun as node ``train.node_rank``
(:mod:`cvops.train.worker` says how).
"""

from __future__ import annotations

import argparse
import subprocess
from typing import List

from cvops.commands._prologue import guarded, parse_args
from cvops.session import open_recipe


def main(argv: List[str]) -> int:
    """``cvops train-worker``; returns the exit status (torchrun's own, once it ran)."""
    ap = argparse.ArgumentParser(prog="cvops train-worker",
                                 description="Join a multi-node training as one more machine.")
    ap.add_argument("--wait", type=float, default=3600.0, help="seconds to wait for node 0's training config")
    args, overrides = parse_args(ap, argv)
    return guarded(lambda: _join(args.wait, overrides))


def _join(wait: float, overrides: List[str]) -> int:
    from cvops.train import worker

    recipe = open_recipe(overrides)
    train = recipe.cfg.train
    worker.check(train)
    fp = recipe.fingerprint("train")
    print(f"cvops train-worker: node {train.node_rank} of {train.nnodes}, train {fp}: waiting for "
          f"{worker.config_path(recipe.store, fp)}", flush=True)
    config = worker.wait_for_config(recipe.store, fp, wait)
    recipe.require("curate")  # the data, into this machine's cache (s3://)
    cmd = worker.torchrun(config, train)
    print("cvops train-worker: " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode
