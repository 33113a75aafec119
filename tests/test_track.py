"""Trackers: the local metrics file always; W&B's real client offline."""

from __future__ import annotations

import json

from cvops.track import NullTracker, WandbTracker


def test_null_tracker_writes_metrics_jsonl(tmp_path):
    t = NullTracker()
    t.start(tmp_path, "run", {"lr": 0.1})
    t.log({"loss": 1.5}, step=1)
    t.log({"loss": 0.5}, step=2)
    t.finish()
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.5), (2, 0.5)]


def test_wandb_tracker_offline_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    t = WandbTracker(project="cvops-test", mode="offline")
    t.start(tmp_path, "run", {"lr": 0.1})
    t.log({"loss": 1.5}, step=1)
    t.finish()
    offline = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert t.run_ref == str(offline[0])
    assert (tmp_path / "metrics.jsonl").is_file()
