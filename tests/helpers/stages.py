"""Small but real stage implementations for testing the runner.

They write files into their artifact directories, read their inputs'
artifacts, log each invocation to $CVOPS_TEST_LOG (one line per build, so a
test can count builds across processes), sleep $CVOPS_TEST_SLEEP_<STAGE>
seconds (to be killed or raced), and the train stage fails on lr > 1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from cvops.stages import register_stage
from cvops.stages import StageContext, StageResult


def _record(ctx: StageContext) -> None:
    log = os.environ.get("CVOPS_TEST_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{ctx.name} {ctx.fingerprint} {os.getpid()}\n")
    delay = float(os.environ.get(f"CVOPS_TEST_SLEEP_{ctx.name.upper()}", "0"))
    if delay:
        (ctx.workdir / "partial.txt").write_text("half written")
        print(f"TEST-STAGE {ctx.name} sleeping in {ctx.workdir}", flush=True)
        time.sleep(delay)


def curate(ctx: StageContext) -> StageResult:
    _record(ctx)
    section = {"project": ctx.config.project, "data": dataclasses.asdict(ctx.config.data),
               "curate": dataclasses.asdict(ctx.config.curate)}
    (ctx.workdir / "dataset.json").write_text(json.dumps(section, sort_keys=True))
    return StageResult({"dataset": "dataset.json"}, {"images_in": 10, "images_kept": 9})


def train(ctx: StageContext) -> StageResult:
    _record(ctx)
    lr = ctx.config.train.lr
    if lr > 1:
        raise FloatingPointError(f"loss is NaN at epoch 1 (lr={lr})")
    dataset = ctx.inputs["curate"].path("dataset")
    section = {"model": dataclasses.asdict(ctx.config.model), "train": dataclasses.asdict(ctx.config.train)}
    (ctx.workdir / "model.json").write_text(json.dumps({"data": dataset.read_text(), "train": section}))
    return StageResult({"checkpoint": "model.json"}, {"final_loss": 1.0 / (1 + lr)})


def evaluate(ctx: StageContext) -> StageResult:
    _record(ctx)
    assert ctx.inputs["train"].path("checkpoint").is_file()
    # evaluate may read only its declared sections: model, train.device, evaluate; the score comes from
    # the checkpoint it was given (which records train's lr), as a real evaluation would
    lr = json.loads(ctx.inputs["train"].path("checkpoint").read_text())["train"]["train"]["lr"]
    score = round(lr * 10, 4)
    (ctx.workdir / "metrics.json").write_text(json.dumps({"val_mAP": score}))
    return StageResult({"metrics": "metrics.json"}, {"val_mAP": score, "mAP": score})


def register() -> None:
    register_stage("curate", curate)
    register_stage("train", train)
    register_stage("evaluate", evaluate)


def unregister() -> None:
    for name in ("curate", "train", "evaluate"):
        register_stage(name, None)
