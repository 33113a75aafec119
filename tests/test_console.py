"""What a person sees: the console filter, the closing summary, and a real run's default and -v output."""

from __future__ import annotations

import io
import logging
import re
import time

import pytest

from cvops import console
from cvops.stages import BUILTIN
from cvops.summary import closing, command_args, opener

SMALL = ("recipe=quickstart", "data.synthetic.num_images=40", "data.synthetic.videos=1",
         "data.synthetic.video_frames=12", "model.image_size=[128,128]", "train.val_interval=1")


def _record(name: str, level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_console_filter_keeps_the_runner_drops_library_noise_and_shows_actionable_warnings_once():
    f = console.ConsoleFilter()
    assert f.filter(_record("cvops", logging.INFO, "  curate    ran"))
    assert not f.filter(_record("cvops.curate.stage", logging.INFO, "  curate: 40 images in"))
    assert f.filter(_record("cvops.train.mmconfig", logging.WARNING, "pretrained weights unreachable"))
    assert not f.filter(_record("mmengine", logging.INFO, "Epoch(train) [1][5/5]"))
    assert not f.filter(_record("fiftyone.core.odm.database", logging.WARNING, "You are running the oldest supported"))
    assert not f.filter(_record("py.warnings", logging.WARNING, "FutureWarning: torch.cuda.amp.autocast is deprecated"))
    msg = "This DataLoader will create 4 worker processes in total. Our suggested max number of worker is 2"
    assert f.filter(_record("py.warnings", logging.WARNING, msg))
    assert not f.filter(_record("py.warnings", logging.WARNING, msg))  # once
    assert f.filter(_record("mmengine", logging.ERROR, "something broke"))


def test_forwarded_library_logger_reaches_the_hierarchy_not_stdout(capsys):
    private = logging.Logger("mmengine-private")  # like mmengine's MMLogger: outside logging's hierarchy
    private.addHandler(logging.StreamHandler(io.StringIO()))
    seen = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.name, record.getMessage()))

    grab = Grab()
    logging.getLogger("mmengine").addHandler(grab)
    try:
        console.adopt(private, "mmengine")
        private.info("Epoch(train) [1][1/1]")
    finally:
        logging.getLogger("mmengine").removeHandler(grab)
    assert seen == [("mmengine", "Epoch(train) [1][1/1]")]
    assert not any(isinstance(h, logging.StreamHandler) and not isinstance(h, console.ForwardHandler)
                   for h in private.handlers)


def test_progress_in_a_pipe_prints_a_line_per_note_and_one_at_the_end():
    out = io.StringIO()
    bar = console.Progress(10, "  train     epoch 1/2", stream=out)
    for _ in range(5):
        bar.update(1, loss=1.5)
    bar.note(**{"val mAP50": 0.25})
    bar.update(5)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "5/10 it" in lines[0] and "val mAP50 0.25" in lines[0] and "ETA" in lines[0]
    assert "10/10 it" in lines[1] and "\r" not in out.getvalue()


def test_progress_in_a_pipe_is_never_silent_longer_than_its_interval():
    out = io.StringIO()
    bar = console.Progress(100, "  train     epoch 1/1", stream=out)
    bar.pipe_interval_s = 0.05
    bar.update(1)
    assert out.getvalue() == ""  # not yet due
    time.sleep(0.06)
    bar.update(1)
    bar.update(1)  # just printed: not due again
    assert out.getvalue().count("\n") == 1 and "2/100 it" in out.getvalue() and "ETA" in out.getvalue()


def test_closing_summary_names_every_stage_its_headline_and_what_to_try_next():
    stages = {s.name: s for s in BUILTIN}
    data = {"project": "demo", "status": "ok", "seconds": 125.0, "stages": {
        "curate": {"status": "cached", "seconds": 0.1, "metrics": {
            "images_kept": 40, "boxes_kept": 90, "images_quarantined": 1, "images_deduplicated": 2,
            "splits": {"train": 28, "val": 6, "test": 6}}},
        "train": {"status": "ran", "seconds": 80.0, "metrics": {"epochs": 3, "best_val_mAP50": 0.41, "best_epoch": 3}},
        "evaluate": {"status": "ran", "seconds": 9.0, "metrics": {"mAP": 0.3012, "mAP50": 0.5544}},
        "export": {"status": "failed", "seconds": 3.0, "reason": "RuntimeError: gate failed"},
        "monitor": {"status": "ran", "seconds": 5.0, "artifacts": {"report": "/runs/x/monitor/report.html"},
                    "metrics": {"drift_detected": True, "drift_features": ["brightness"], "window_images": 60,
                                "edge_cases": 4, "review_dataset": "demo-review"}}}}
    args = command_args("quickstart", ["recipe=quickstart", "stages=[curate,train]", "model.image_size=[128,128]",
                                       "hydra.run.dir=/x"])
    assert args == "recipe=quickstart 'model.image_size=[128,128]'"
    text = "\n".join(closing(data, stages, args, "/runs/x"))
    assert "40 images, 90 boxes kept; 1 quarantined, 2 duplicates; 28/6/6 train/val/test" in text
    assert "test mAP 0.301, mAP50 0.554" in text
    assert "RuntimeError: gate failed" in text
    assert "DRIFT in brightness on 60 images; 4 edge cases -> demo-review" in text
    assert "cvops app recipe=quickstart 'model.image_size=[128,128]'" in text
    opens = opener()  # the drift report opens where a file opener is (xdg-open, macOS' open); else its path alone
    assert f"  {opens + ' ' if opens else ''}/runs/x/monitor/report.html   # the drift report" in text
    assert "cvops serve" not in text  # export failed: nothing to serve


@pytest.mark.slow
def test_default_output_is_short_and_ends_with_a_summary_and_v_restores_the_libraries_logs(cvops):
    r = cvops(*SMALL, "stages=[curate,train,evaluate]", "train.max_epochs=3", "tracker=wandb", timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    lines = out.splitlines()
    assert len(lines) <= 40, out
    assert not [ln for ln in lines if re.search(r"[A-Za-z]+Warning\b", ln)], out
    assert not [ln for ln in lines if "Epoch(train)" in ln or "mmengine" in ln], out
    # every line is cvops' own: its header/summary lines, indented stage lines, the next commands, the run dir
    foreign = [ln for ln in lines if ln and not re.match(r"^(cvops · |  \S|next:|\(run dir )", ln)]
    assert not foreign, out
    assert any(re.match(r"^cvops · quickstart · ok in ", ln) for ln in lines), out
    summary = [ln for ln in lines if re.match(r"^\s+evaluate\s+ran\s", ln)]
    assert summary and all("test mAP" in ln for ln in summary), out
    assert sum("W&B run" in ln for ln in lines) == 1, out  # train's W&B run, one line
    assert any(re.match(r"^\s+train\s+epoch 3/3\s+\S+ it\s.*val mAP50", ln) for ln in lines), out  # progress
    log = next(cvops.workdir.glob("outputs/**/cvops.log")).read_text()
    assert "Epoch(train)" in log and "Warning" in log  # everything is in the run dir's log

    v = cvops("-v", *SMALL, "stages=[curate,train]", "train.max_epochs=1", "train.seed=1", "tracker=none",
              timeout=900)
    assert v.returncode == 0, (v.stdout + v.stderr)[-4000:]
    assert "Epoch(train)" in v.stdout + v.stderr
