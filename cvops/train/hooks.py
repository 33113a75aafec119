"""mmengine hooks cvops adds to every training run."""

from __future__ import annotations

import math
from typing import Any, List, Optional

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
            if self.bar.total != runner.train_loop.max_iters:  # the epochs were planned meanwhile (a time budget)
                self.bar.set_total(runner.train_loop.max_iters)
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


def mosaic_switch_epoch(epochs: int, mosaic_share: Optional[float]) -> int:
    """The epoch the simpler pipeline starts at, of ``epochs`` planned: ``mosaic_share`` of them with
    mosaic/mixup (``train.mosaic_epochs / max_epochs``; 0: none), at least one while it is above 0;
    None: the base schedule's share (RTMDet: all but the last 20 of 300, at least one epoch without)."""
    if mosaic_share is None:
        return max(1, epochs - max(1, round(epochs * 20 / 300)))
    if mosaic_share <= 0:
        return 0
    return min(epochs, max(1, round(epochs * mosaic_share)))


def yolox_last_epochs(epochs: int, mosaic_share: Optional[float]) -> int:
    """YOLOX's mode switch: the last epochs without mosaic, of ``epochs`` (None: its base, 15 of 300)."""
    if mosaic_share is None:
        return max(1, round(epochs * 15 / 300))
    return epochs - mosaic_switch_epoch(epochs, mosaic_share)


@HOOKS.register_module(name="CvopsTimeBudgetHook")
class TimeBudgetHook(Hook):
    """``train.max_minutes``: plan the epochs that fit a wall-clock budget and lay the schedule out over them.

    The first epoch (with its validation) is timed; then the run is given ``1 + (budget - elapsed) //
    epoch time`` epochs (a 5 % margin kept, at most ``max_epochs``), and the cosine decay and the mosaic
    switch move to the new end, so the schedule ends where the budget does instead of being cut in its
    middle. Each later epoch plans again from the mean time of the epochs since the first (which pays for
    start-up, the first mosaic epoch and whatever else the machine was doing then), moving the end (and the
    decay's start while it has not begun): a first epoch that was slow or fast neither leaves minutes unused
    nor runs out. If the budget still runs
    out, training stops after the epoch in progress and says so; the best checkpoint so far is the result.
    ``time_budget.json`` in the work dir records the plan.
    """

    priority = "BELOW_NORMAL"  # plans before the progress bar (LOW) reads the new total

    def __init__(self, max_minutes: float, decay_from: float = 0.0, mosaic_share: Optional[float] = None) -> None:
        """``mosaic_share``: the share of the epochs with mosaic/mixup (``train.mosaic_epochs / max_epochs``)."""
        self.budget_s = float(max_minutes) * 60.0
        self.decay_from = float(decay_from)
        self.mosaic_share = mosaic_share
        self.t0 = 0.0
        self.planned: Optional[int] = None
        self.first_s: Optional[float] = None  # when the first plan was made (seconds into training)
        self.first_epochs = 0  # epochs done then
        self.replans = 0
        self.stopped = False

    def before_train(self, runner: Any) -> None:
        import json
        import time
        from pathlib import Path

        self.t0 = time.monotonic()
        if runner.epoch > 0:  # resumed: the plan made before (the schedulers' own state came with the checkpoint)
            try:
                self.planned = int(json.loads((Path(runner.work_dir) / "time_budget.json").read_text())["planned_epochs"])
            except (OSError, ValueError, KeyError, TypeError):
                return
            loop = runner.train_loop
            loop._max_epochs = max(self.planned, runner.epoch + 1)
            loop._max_iters = loop._max_epochs * len(loop.dataloader)

    def after_train_epoch(self, runner: Any) -> None:
        loop = runner.train_loop
        validates = loop.val_begin <= 1 and loop.val_interval == 1 and runner.val_loop is not None
        if runner.epoch == 0 and not validates:  # no validation after the first epoch: plan now
            self._plan(runner)
        elif self.first_s is not None and runner.epoch + 1 > self.first_epochs:
            self._replan(runner, runner.epoch + 1)

    def _replan(self, runner: Any, done: int) -> None:
        """Plan again from the epochs since the first. A decay that has begun keeps its start and bends to the
        new end: mmengine's cosine is chained (each step scales the current value), so the lr stays continuous
        and still reaches its floor at the planned end."""
        import time

        if self.stopped:
            return
        now = time.monotonic() - self.t0
        per = (now - float(self.first_s)) / max(1, done - self.first_epochs)
        fit = done + int(max(0.0, self.budget_s * 0.95 - now) // max(per, 1e-6))
        fit = max(done + 1, min(runner.train_loop.max_epochs if self.planned is None else self._cap, fit))
        if fit != self.planned:
            self.planned = fit
            self.replans += 1
            self._relay(runner, fit)
            self._write(runner, None)

    @staticmethod
    def _cosines(runner: Any) -> List[Any]:
        schedulers = runner.param_schedulers
        return [s for s in (schedulers if isinstance(schedulers, list) else [x for v in schedulers.values() for x in v])
                if hasattr(s, "T_max")]

    def after_val_epoch(self, runner: Any, metrics: Optional[dict] = None) -> None:
        if runner.epoch == 1:  # the first epoch and its validation timed; the loop checks its end next
            self._plan(runner)

    def _plan(self, runner: Any) -> None:
        import time

        if self.planned is not None:
            return
        elapsed = time.monotonic() - self.t0
        loop = runner.train_loop
        self._cap = loop.max_epochs  # max_epochs as configured: a later plan never goes past it
        fit = 1 + int(max(0.0, self.budget_s * 0.95 - elapsed) // max(elapsed, 1e-6))
        self.planned = max(1, min(loop.max_epochs, fit))
        self.first_s, self.first_epochs = elapsed, runner.epoch if runner.epoch else 1
        self._relay(runner, self.planned)
        self._write(runner, elapsed)

    def _relay(self, runner: Any, epochs: int) -> None:
        loop = runner.train_loop
        per_epoch = len(loop.dataloader)
        loop._max_epochs = epochs
        loop._max_iters = epochs * per_epoch
        schedulers = runner.param_schedulers
        for s in (schedulers if isinstance(schedulers, list) else [x for v in schedulers.values() for x in v]):
            if hasattr(s, "T_max"):  # the cosine decay: from its share of the planned epochs to their end
                if s.begin >= per_epoch and runner.iter < s.begin:  # not begun: moved exactly
                    s.begin = max(per_epoch, runner.iter, int(round(epochs * self.decay_from)) * per_epoch)
                s.end = epochs * per_epoch
                s.T_max = max(1, s.end - s.begin)
        from mmdet.engine.hooks import PipelineSwitchHook, YOLOXModeSwitchHook

        for hook in runner.hooks:  # found by type: a name-based lookup once matched this hook itself
            if isinstance(hook, PipelineSwitchHook):  # mosaic/mixup for its share of the planned epochs
                hook.switch_epoch = mosaic_switch_epoch(epochs, self.mosaic_share)
            elif isinstance(hook, YOLOXModeSwitchHook):
                hook.num_last_epochs = yolox_last_epochs(epochs, self.mosaic_share)

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                         outputs: Optional[dict] = None) -> None:
        import time

        if not self.stopped and time.monotonic() - self.t0 > self.budget_s:
            self.stopped = True
            loop = runner.train_loop
            loop._max_epochs = runner.epoch + 1  # this epoch ends the run (its validation included)
            loop._max_iters = loop._max_epochs * len(loop.dataloader)
            runner.logger.warning(f"train.max_minutes: the budget of {self.budget_s / 60:.1f} min ran out in epoch "
                                  f"{runner.epoch + 1}; stopping after it")

    def after_train(self, runner: Any) -> None:
        import time

        self._write(runner, None, time.monotonic() - self.t0)

    def _write(self, runner: Any, first_epoch_s: Optional[float], total_s: Optional[float] = None) -> None:
        import json
        from pathlib import Path

        path = Path(runner.work_dir) / "time_budget.json"
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            rec = {}
        rec.update(budget_s=self.budget_s, planned_epochs=self.planned or runner.train_loop.max_epochs,
                   stopped_at_budget=self.stopped, replans=self.replans)
        if first_epoch_s is not None:
            rec["first_epoch_s"] = round(first_epoch_s, 2)
        if total_s is not None:
            rec["train_s"] = round(total_s, 2)
        if runner.rank == 0:
            path.write_text(json.dumps(rec))
