"""mmengine hooks cvops adds to every training run."""

from __future__ import annotations

import math
from typing import Any, Optional

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(name="CvopsFiniteLossHook")
class FiniteLossHook(Hook):
    """Stop at the first NaN/inf loss, naming the epoch and iteration.

    Raising inside the loop keeps the checkpoints written so far: the last
    good one stays where ``last_checkpoint`` points, and ``train.resume=true``
    (after lowering the lr, say) continues from it.
    """

    priority = "VERY_HIGH"

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                         outputs: Optional[dict] = None) -> None:
        loss = (outputs or {}).get("loss")
        if loss is None:
            return
        value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
        if not math.isfinite(value):
            last = None
            try:
                last = open(f"{runner.work_dir}/last_checkpoint").read().strip()
            except OSError:
                pass
            raise FloatingPointError(
                f"loss is {value} at epoch {runner.epoch + 1}, iteration {runner.iter + 1} "
                f"(batch {batch_idx + 1} of the epoch); last good checkpoint: {last or 'none yet'}. "
                "Lower train.lr or check the data, then rerun with train.resume=true")
