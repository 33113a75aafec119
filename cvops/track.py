"""Experiment trackers (``conf/tracker/``): W&B, or none.

Whatever the tracker, every logged value also goes to ``metrics.jsonl`` in the
directory the tracker was started with, one JSON object per ``log`` call.
W&B runs offline unless ``WANDB_MODE`` (or ``tracker.mode``) says otherwise;
offline runs land in ``<dir>/wandb/offline-run-*`` and upload later with
``wandb sync <that dir>``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence


class NullTracker:
    """No remote tracker; the local ``metrics.jsonl`` only."""

    def __init__(self, project: Optional[str] = None, group: Optional[str] = None,
                 mode: Optional[str] = None, tags: Sequence[str] = ()) -> None:
        self.project, self.group, self.mode, self.tags = project, group, mode, list(tags)
        self.dir: Optional[Path] = None

    def start(self, dir: os.PathLike | str, name: str, config: Dict[str, Any]) -> None:
        """Begin a run named ``name`` writing into ``dir``."""
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name

    @property
    def metrics_file(self) -> Path:
        if self.dir is None:
            raise RuntimeError("tracker not started: call start(dir, name, config) first")
        return self.dir / "metrics.jsonl"

    def log(self, metrics: Dict[str, Any], step: Optional[int] = None) -> None:
        row = {"time": time.time(), **({"step": step} if step is not None else {}), **metrics}
        with open(self.metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=float) + "\n")

    def summary(self, values: Dict[str, Any]) -> None:
        self.log({"summary": values})

    def finish(self) -> None:
        pass

    def mmengine_backends(self, name: str, config: Dict[str, Any]) -> list:
        """mmengine visualizer backends that feed this tracker during training."""
        return []

    @property
    def run_ref(self) -> Optional[str]:
        """Where to look at the run (URL or local directory), if any."""
        return None


class WandbTracker(NullTracker):
    """Weights & Biases through its own client (offline by default)."""

    def start(self, dir: os.PathLike | str, name: str, config: Dict[str, Any]) -> None:
        import wandb

        super().start(dir, name, config)
        mode = os.environ.get("WANDB_MODE") or self.mode or "offline"
        self.run = wandb.init(
            project=self.project, group=self.group, name=name, dir=str(self.dir), config=config,
            mode=mode, tags=self.tags or None, reinit="finish_previous",
        )

    def log(self, metrics: Dict[str, Any], step: Optional[int] = None) -> None:
        super().log(metrics, step)
        self.run.log(metrics, step=step)

    def mmengine_backends(self, name: str, config: Dict[str, Any]) -> list:
        """mmengine's own W&B backend: losses, lr and val metrics as training logs them."""
        init = dict(project=self.project, group=self.group, name=name, config=config,
                    mode=os.environ.get("WANDB_MODE") or self.mode or "offline", tags=self.tags or None)
        return [dict(type="WandbVisBackend", init_kwargs=init)]

    def summary(self, values: Dict[str, Any]) -> None:
        super().summary(values)
        self.run.summary.update(values)

    def finish(self) -> None:
        run = getattr(self, "run", None)
        if run is not None:
            self._ref = run.url or str(Path(run.dir).parent)
            run.finish()
            self.run = None

    @property
    def run_ref(self) -> Optional[str]:
        run = getattr(self, "run", None)
        if run is not None:
            return run.url or str(Path(run.dir).parent)
        return getattr(self, "_ref", None)



class StageTracker:
    """The recipe's tracker for one stage (``ctx.tracker``), owned by the runner.

    Started on first use (a stage that logs nothing opens no W&B run), named
    ``<project>-<stage>-<fingerprint>``, with the whole recipe as its config;
    finished by the runner after the stage (with the stage's metrics as the
    summary), so a stage only logs.
    """

    def __init__(self, node: Any, dir: os.PathLike | str, stage: str, fingerprint: str, recipe: Dict[str, Any],
                 project: str) -> None:
        self._node, self.dir = node, Path(dir)
        self.name = f"{project}-{stage}-{fingerprint[:8]}"
        self.config = {"recipe": recipe, "stage": stage, "fingerprint": fingerprint}
        self._tracker: Optional[NullTracker] = None
        self._started = False
        self._external = False  # mmengine's visualizer owns the run (train)

    def _get(self) -> NullTracker:
        if self._tracker is None:
            from cvops.instantiate import instantiate

            self._tracker = instantiate(self._node)
        return self._tracker

    def _start(self) -> NullTracker:
        t = self._get()
        if not self._started:
            t.start(self.dir, self.name, self.config)
            self._started = True
        return t

    def log(self, metrics: Dict[str, Any], step: Optional[int] = None) -> None:
        self._start().log(metrics, step)

    def summary(self, values: Dict[str, Any]) -> None:
        self._start().summary(values)

    def mmengine_backends(self, extra: Optional[Dict[str, Any]] = None) -> list:
        """mmengine visualizer backends that feed this tracker while mmengine trains (it owns that run)."""
        self._external = True
        return self._get().mmengine_backends(self.name, {**self.config, **(extra or {})})

    def close(self, metrics: Dict[str, Any]) -> None:
        """End of the stage: the metrics as summary, then finish (only if the stage used the tracker)."""
        if self._started and self._tracker is not None:
            try:
                self._tracker.summary(metrics)
            finally:
                self._tracker.finish()

    @property
    def run_ref(self) -> Optional[str]:
        return self._tracker.run_ref if self._tracker is not None else None
