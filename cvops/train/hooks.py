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


@HOOKS.register_module(name="CvopsProgressHook")
class ProgressHook(Hook):
    """One progress bar for the whole training: epoch, loss, the latest val mAP50 and the ETA
    (:class:`cvops.console.Progress`; mmengine's own per-iteration lines go to ``cvops.log``)."""

    priority = "LOW"

    def __init__(self) -> None:
        self.bar: Any = None

    def before_train(self, runner: Any) -> None:
        from cvops.console import Progress

        if runner.rank != 0:
            return
        loop = runner.train_loop
        self.bar = Progress(loop.max_iters, self._desc(runner, runner.epoch), unit="it")
        self.bar.update(runner.iter)  # resumed: start where the checkpoint is

    @staticmethod
    def _desc(runner: Any, epoch: int) -> str:
        return f"  train     epoch {min(epoch + 1, runner.max_epochs)}/{runner.max_epochs}"

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                         outputs: Optional[dict] = None) -> None:
        if self.bar is None:
            return
        loss = (outputs or {}).get("loss")
        post = {}
        if loss is not None:
            post["loss"] = round(float(loss.detach()) if hasattr(loss, "detach") else float(loss), 4)
        self.bar.update(1, **post)

    def before_train_epoch(self, runner: Any) -> None:
        if self.bar is not None:
            self.bar.set_desc(self._desc(runner, runner.epoch))

    def after_val_epoch(self, runner: Any, metrics: Optional[dict] = None) -> None:
        if self.bar is None or not metrics:
            return
        m50 = metrics.get("coco/bbox_mAP_50")
        if m50 is not None:
            self.bar.set_desc(self._desc(runner, runner.epoch - 1))
            self.bar.note(**{"val mAP50": round(float(m50), 3)})

    def after_train(self, runner: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
