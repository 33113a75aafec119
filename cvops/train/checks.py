"""The train stage's own check of its config: every value its types cannot refuse, before any work.

Light to import (no torch, no mmengine): the preflight runs it for every recipe.
"""

from __future__ import annotations

import math
from typing import Any

from cvops.errors import ConfigError


def check(model: Any, train: Any) -> None:
    """Refuse ``model`` and ``train`` values no training can run with, naming the key, the value and the fix.

    Raises:
        ConfigError: the first bad value.
    """
    def need(ok: bool, key: str, value: Any, want: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={value!r}: {want}")

    size = list(model.image_size)
    need(len(size) == 2 and all(int(v) >= 32 for v in size), "model.image_size", size,
         "[width, height], each at least 32 pixels")
    for key in ("max_epochs", "batch_size", "base_batch_size", "val_interval", "log_interval", "gpus", "nnodes"):
        need(int(getattr(train, key)) >= 1, f"train.{key}", getattr(train, key), "1 or more")
    for key in ("warmup_iters", "num_workers"):
        need(int(getattr(train, key)) >= 0, f"train.{key}", getattr(train, key), "0 or more")
    need(math.isfinite(train.lr) and train.lr > 0, "train.lr", train.lr, "a learning rate above 0")
    need(math.isfinite(train.weight_decay) and train.weight_decay >= 0, "train.weight_decay", train.weight_decay,
         "0 or more")
    budget = getattr(train, "max_minutes", None)
    need(budget is None or (math.isfinite(budget) and budget > 0), "train.max_minutes", budget,
         "a wall-clock budget in minutes above 0 (null: none)")
    need(0.0 <= train.lr_decay_from < 1.0, "train.lr_decay_from", train.lr_decay_from,
         "a fraction of max_epochs in [0, 1)")
    need(train.mosaic_epochs is None or 0 <= train.mosaic_epochs <= train.max_epochs, "train.mosaic_epochs",
         train.mosaic_epochs, f"null or 0..train.max_epochs ({train.max_epochs})")
    jitter = train.scale_jitter
    need(jitter is None or (len(jitter) == 2 and 0 < jitter[0] <= jitter[1]), "train.scale_jitter", jitter,
         "null or [low, high] with 0 < low <= high")
    need(0 <= train.node_rank < train.nnodes, "train.node_rank", train.node_rank,
         f"0..train.nnodes-1 ({train.nnodes} node(s))")
    need(1 <= train.master_port <= 65535, "train.master_port", train.master_port, "a TCP port, 1..65535")


def check_stage(config: Any) -> None:
    """:func:`check` of a stage's typed view (``Stage.check``)."""
    check(config.model, config.train)
