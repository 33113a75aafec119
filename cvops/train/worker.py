"""One more machine of a multi-node training (torchrun's static rendezvous): ``cvops train-worker``.

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

import time
from pathlib import Path
from typing import Any, List

from cvops.errors import ConfigError, UserError


class WorkerError(UserError):
    """A worker that cannot join (the training is over, or node 0 never wrote its config)."""


def check(train: Any) -> None:
    """``train`` (the recipe's ``train`` section) describes a worker node of a multi-node training.

    Raises:
        ConfigError: not ``train.launcher=pytorch`` with ``train.nnodes`` >= 2, or ``train.node_rank`` is 0
            (node 0 runs the train stage itself) or out of range.
    """
    from cvops.schema import Launcher

    if Launcher(train.launcher) is not Launcher.pytorch or int(train.nnodes) < 2:
        raise ConfigError("cvops train-worker joins a multi-node training: give the node 0 command's "
                          "train.launcher=pytorch and train.nnodes=N (N >= 2)")
    if not 1 <= int(train.node_rank) < int(train.nnodes):
        raise ConfigError(f"train.node_rank={train.node_rank}: a worker is node 1..{int(train.nnodes) - 1} "
                          f"(node 0 runs the train stage: cvops recipe=... without train-worker)")


def config_path(store: Any, fingerprint: str) -> Path:
    """Where node 0 writes the training config of the train build ``fingerprint`` (on this machine)."""
    return store.dir("train", fingerprint) / "config.py"


def wait_for_config(store: Any, fingerprint: str, timeout_s: float) -> Path:
    """Wait until node 0 has written the training config of the train build ``fingerprint``; its path.

    Raises:
        WorkerError: the build is already committed (its training is over), or no config came in ``timeout_s``.
    """
    config = config_path(store, fingerprint)
    deadline = time.monotonic() + timeout_s
    while True:
        if store.is_complete("train", fingerprint):  # committed: its training is over (config.py is in it too)
            raise WorkerError(f"train {fingerprint} is already built ({store}/train/{fingerprint}); nothing to join")
        if store.pending("train", fingerprint, "config.py", config):
            return config
        if time.monotonic() > deadline:
            raise WorkerError(f"no training config at {config} after {timeout_s:.0f} s: is node 0 running the same "
                              "command (and the same paths.store)?")
        time.sleep(0.5)


def torchrun(config: Path, train: Any) -> List[str]:
    """The torchrun command line that joins node 0's training as node ``train.node_rank``."""
    from cvops.train.stage import torchrun_command

    return torchrun_command(config, train, node_rank=int(train.node_rank))


__all__ = ["WorkerError", "check", "config_path", "wait_for_config", "torchrun"]
