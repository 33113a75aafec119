"""The train stage: the recipe's detector trained on the curated COCO exports.

Artifacts (``train/<fingerprint>/``, mmengine's work dir): ``best.pth`` (best
val mAP) and ``last.pth`` (links to mmengine's checkpoints), ``config.py`` (the
resolved mmengine config: ``Runner.from_cfg(Config.fromfile("config.py"))``
reproduces the run in raw mmdet), ``metrics.jsonl`` (every logged scalar),
``curves.png`` (loss, lr, val mAP per epoch) and the W&B run directory.

Resume (``train.resume=true``): a run killed mid-training continues from its
last checkpoint (same fingerprint, the artifact directory is kept); with a
raised ``train.max_epochs`` (a new fingerprint), the newest checkpoint of the
same lineage (same data, model and schedule apart from epochs) is the start.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from cvops.schema import Device, Launcher
from cvops.stages import StageContext, StageResult

log = logging.getLogger(__name__)  # details: cvops.log (the console shows its warnings)
LINEAGE = "lineage.json"


def _lineage(ctx: StageContext) -> str:
    """Same data, model, schedule, code, libraries and starting weights except max_epochs: checkpoints can
    continue each other (a checkpoint of other code or another mmdet is never resumed into this artifact)."""
    train = dataclasses.asdict(ctx.config.train)
    for key in ("max_epochs", "resume"):
        train.pop(key, None)
    section = json.loads(json.dumps({"model": dataclasses.asdict(ctx.config.model), "train": train}))
    payload = {"curate": ctx.inputs["curate"].fingerprint, "config": section, "code": ctx.code,
               "external": ctx.external}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _epoch_of(checkpoint: str) -> Optional[int]:
    import re

    m = re.search(r"epoch_(\d+)\.pth$", checkpoint)
    return int(m.group(1)) if m else None


def _resume_point(ctx: StageContext, lineage: str) -> Optional[str]:
    """Checkpoint to resume from: this artifact's own, else the newest of its lineage that is short of this
    run's ``max_epochs`` (a 12-epoch checkpoint is no start for a 1-epoch run: it would be that run)."""
    own = ctx.workdir / "last_checkpoint"
    if ctx.resuming and own.is_file() and Path(own.read_text().strip()).is_file():
        return own.read_text().strip()
    best, newest = None, 0.0
    for other in ctx.workdir.parent.iterdir():
        marker = other / LINEAGE
        if other == ctx.workdir or not marker.is_file():
            continue
        if json.loads(marker.read_text()).get("lineage") != lineage:
            continue
        last = other / "last_checkpoint"
        if not last.is_file() or not Path(last.read_text().strip()).is_file():
            continue
        epoch = _epoch_of(last.read_text().strip())
        if epoch is not None and epoch >= int(ctx.config.train.max_epochs):
            continue
        if last.stat().st_mtime > newest:
            best, newest = last.read_text().strip(), last.stat().st_mtime
    return best


def _scalars(work: Path) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    for f in sorted(work.glob("*/vis_data/scalars.json"), key=lambda p: p.parent.parent.name):
        for line in f.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a run killed mid-write leaves a partial last line
                continue
    return rows


def _curves(rows: List[Dict[str, Any]], out: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "coco/bbox_mAP" in r]
    ax1.plot([r["iter"] for r in train], [r["loss"] for r in train])
    ax1.set_title("train loss")
    ax1.set_xlabel("iteration")
    ax2.plot([r["iter"] for r in train], [r["lr"] for r in train])
    ax2.set_title("learning rate")
    ax3.plot([r["step"] for r in val], [r["coco/bbox_mAP"] for r in val], marker="o", label="mAP")
    ax3.plot([r["step"] for r in val], [r["coco/bbox_mAP_50"] for r in val], marker="o", label="mAP50")
    ax3.set_title("val")
    ax3.set_xlabel("epoch")
    ax3.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    return out


def _images_here(curate: Any, coco: Path) -> None:
    """Fail with the fix when the curated images are not on this machine (curate ran elsewhere)."""
    images = json.loads(Path(coco).read_text(encoding="utf-8")).get("images") or []
    missing = next((im["file_name"] for im in images[:50] if not Path(im["file_name"]).is_file()), None)
    if missing is None:
        return
    raise FileNotFoundError(
        f"the curated images are not on this machine: {missing} (from {coco}). The curate artifact was built "
        "on another machine; with an s3:// store its images travel inside the artifact at the path its cache "
        f"had there: give every machine the same paths.cache (CVOPS_CACHE_DIR); this one's is {curate.dir}")


def run(ctx: StageContext) -> StageResult:
    """Train the recipe's detector on curate's COCO train split (val for checkpoint selection)."""
    model, train = ctx.config.model, ctx.config.train
    if train.device is Device.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA
    import torch

    from cvops.train import hooks  # noqa: F401  (registers CvopsFiniteLossHook)
    from cvops.train import mmconfig
    from cvops.detector.checkpoint import allow_mmengine_checkpoints

    cuda = torch.cuda.is_available() and train.device is not Device.cpu
    if train.device is Device.cuda and not cuda:
        raise RuntimeError("train.device=cuda but torch sees no CUDA device; use train.device=auto or cpu")
    work = ctx.workdir
    curate = ctx.inputs["curate"]
    classes = list(curate.metrics["classes"])
    exports = {s: curate.path(f"coco_{s}") for s in ("train", "val", "test")}
    _images_here(curate, exports["train"])

    vis = ctx.tracker.mmengine_backends({
        "dataset_version": curate.metrics.get("dataset_version"),
        "curate": {k: v for k, v in curate.metrics.items() if k != "seconds_by_phase"}})
    cfg, notes = mmconfig.build(model, train, classes, exports, work, vis, cuda)
    for n in notes:
        log.warning("  train: %s", n)
    lineage = _lineage(ctx)
    if train.resume:
        start = _resume_point(ctx, lineage)
        if start:
            from cvops.detector.checkpoint import load

            try:
                load(start)  # a corrupt checkpoint fails here, before mmengine touches the work dir
            except ValueError as e:
                raise ValueError(f"cannot resume: {e}. Delete it (or its run) to resume from an earlier "
                                 "checkpoint, or drop train.resume to start fresh") from e
            cfg.load_from, cfg.resume = start, True
            logging.getLogger("cvops").info("  train     resuming from %s", start)  # the console's too
        else:
            log.info("  train: train.resume=true but no checkpoint of this lineage exists: starting fresh")
    (work / LINEAGE).write_text(json.dumps({"lineage": lineage, "fingerprint": ctx.fingerprint}))
    cfg.dump(str(work / "config.py"))
    if train.nnodes > 1:  # the workers (cvops train-worker) start from this config; an s3:// store carries it
        ctx.store.publish("train", ctx.fingerprint, work / "config.py", "config.py")
    allow_mmengine_checkpoints()
    t0 = time.perf_counter()
    if train.launcher is Launcher.pytorch:
        _torchrun(work / "config.py", train, cfg.resume, cfg.load_from)
    else:
        quiet_runner(cfg).train()
    seconds = time.perf_counter() - t0
    result = _collect(work, seconds)
    result.metrics["masks"] = mmconfig.trains_masks(cfg)  # an instance-segmentation model: evaluate scores masks
    return result


def quiet_runner(cfg: Any) -> Any:
    """mmengine's Runner without the multi-page config and environment dumps in the log
    (the config is in ``config.py``; the environment in ``run.json`` and ``cvops doctor``), its
    lines handed to the ``mmengine`` logger: ``cvops.log`` gets them all, the console with ``-v``."""
    from mmengine.runner import Runner

    from cvops.console import adopt

    class _Runner(Runner):
        def build_logger(self, *args: Any, **kwargs: Any) -> Any:
            logger = super().build_logger(*args, **kwargs)
            logger.addFilter(lambda r: not (str(r.msg).startswith("Config:")
                                            or "System environment:" in str(r.msg)[:100]))
            adopt(logger, "mmengine")
            return logger

    # mmengine formats the whole config with yapf (1-2 s of CPU each time) for every checkpoint it
    # saves, every config dump and the "Config:" log line; config.py (dumped by the caller) is formatted once,
    # the runner's copies are the same Python unformatted.
    cfg = copy.copy(cfg)
    object.__setattr__(cfg, "_format_python_code", False)
    return _Runner.from_cfg(cfg)


def torchrun_command(config: Path, train: Any, node_rank: int = 0) -> List[str]:
    """The torchrun command of one machine: ``--standalone`` on one, else a static rendezvous of
    ``train.nnodes`` machines at ``train.master_addr:master_port`` with this one as ``node_rank``."""
    if train.nnodes > 1:
        where = [f"--nnodes={train.nnodes}", f"--node_rank={node_rank}", f"--master_addr={train.master_addr}",
                 f"--master_port={train.master_port}"]
    else:
        where = ["--standalone"]
    return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={train.gpus}",
            "-m", "cvops.train.dist", str(config)]


def _torchrun(config: Path, train: Any, resume: bool, load_from: Optional[str]) -> None:
    """Data-parallel training through mmengine's launcher, one process per GPU (gloo on CPU), on this machine
    (node 0) and, with ``train.nnodes > 1``, the workers that join it (``cvops train-worker``)."""
    if train.node_rank != 0:
        raise ValueError(f"train.node_rank={train.node_rank}: the train stage runs on node 0, which commits the "
                         f"artifact; on node {train.node_rank} run `cvops train-worker` with the same arguments")
    if train.nnodes > 1:
        log.warning("  train: waiting for %d more node(s) at %s:%d (cvops train-worker ... train.node_rank=K)",
                    train.nnodes - 1, train.master_addr, train.master_port)
    cmd = torchrun_command(config, train)
    if resume:
        cmd += ["--resume", str(load_from)]
    log.info("  train: %s", " ".join(cmd))
    r = subprocess.run(cmd)
    if r.returncode != 0:
        raise RuntimeError(f"distributed training failed (torchrun exit {r.returncode}): its workers' errors are "
                           f"above; their full logs are in {config.parent}/<timestamp>/ (rerun with -v to see them "
                           "here)")


def _collect(work: Path, seconds: float) -> StageResult:
    rows = _scalars(work)
    with open(work / "metrics.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    best = sorted(work.glob("best_coco_bbox_mAP_epoch_*.pth"), key=lambda p: p.stat().st_mtime)
    last_file = work / "last_checkpoint"
    last = Path(last_file.read_text().strip()) if last_file.is_file() else None
    if last is None or not last.is_file():
        raise RuntimeError(f"training finished without a checkpoint in {work}")
    best_ckpt = best[-1] if best else last
    for link, target in (("best.pth", best_ckpt), ("last.pth", last)):
        (work / link).unlink(missing_ok=True)
        (work / link).symlink_to(target.name)
    val = [r for r in rows if "coco/bbox_mAP" in r]
    train_rows = [r for r in rows if "loss" in r]
    artifacts = {"checkpoint": "best.pth", "last_checkpoint": "last.pth", "config": "config.py",
                 "metrics": "metrics.jsonl"}
    if rows:
        artifacts["curves"] = _curves(rows, work / "curves.png").name
    wandb_runs = sorted(work.glob("**/wandb/*run-*"))
    if wandb_runs:
        artifacts["wandb_run"] = str(wandb_runs[-1].relative_to(work))
    best_row = max(val, key=lambda r: r["coco/bbox_mAP"]) if val else {}
    metrics = {
        "epochs": max((r.get("epoch", 0) for r in train_rows), default=0),
        "iterations": max((r.get("iter", 0) for r in train_rows), default=0),
        "final_loss": train_rows[-1]["loss"] if train_rows else None,
        "best_val_mAP": best_row.get("coco/bbox_mAP"),
        "best_val_mAP50": best_row.get("coco/bbox_mAP_50"),
        **({"best_val_segm_mAP": best_row.get("coco/segm_mAP")} if "coco/segm_mAP" in best_row else {}),
        "best_epoch": best_row.get("step"),
        "seconds": round(seconds, 1),
        "best_checkpoint": best_ckpt.name,
    }
    budget = work / "time_budget.json"
    if budget.is_file():  # train.max_minutes: the plan, and whether the budget ran out
        try:
            metrics["time_budget"] = json.loads(budget.read_text())
        except ValueError:
            pass
    reports = [n for n in ("config.py", "curves.png", "best.pth", "last.pth") if (work / n).exists()]
    return StageResult(artifacts, metrics, reports=reports)
