"""Sweep leaderboard: ``leaderboard.md`` and ``leaderboard.csv`` in the sweep dir.

Every job rewrites it when it ends (under a file lock), from the ``run.json``
files of all jobs so far, so the leaderboard exists and is complete even when
a job fails or the sweep is interrupted; :class:`LeaderboardCallback` writes
the final one when the sweep ends.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("cvops")

#: Overrides that every job carries and that say nothing about the job.
_NOISE = ("hydra.", "hydra/")


def _job_rows(sweep_dir: Path) -> List[Dict[str, Any]]:
    rows = []
    for run_json in sorted(sweep_dir.glob("*/run.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        try:
            run = json.loads(run_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            rows.append({"job": run_json.parent.name, "status": f"unreadable run.json: {e}", "value": None})
            continue
        head = run.get("headline") or {}
        failed = [f"{n}: {s.get('reason', '')}" for n, s in run.get("stages", {}).items() if s.get("status") == "failed"]
        wandb = next((s["artifacts"]["wandb_run"] for s in run.get("stages", {}).values()
                      if isinstance(s.get("artifacts"), dict) and "wandb_run" in s["artifacts"]), "")
        rows.append({
            "job": run_json.parent.name,
            "overrides": " ".join(o for o in run.get("overrides", []) if not o.startswith(_NOISE)),
            "status": run.get("status", "?"),
            "metric": head.get("metric"),
            "mode": head.get("mode", "max"),
            "value": head.get("value"),
            "stages": " ".join(f"{n}:{s.get('status')}" for n, s in run.get("stages", {}).items()),
            "error": run.get("error") or "; ".join(failed),
            "run_dir": str(run_json.parent),
            "wandb": wandb,
        })
    return rows


def _sort_key(row: Dict[str, Any]) -> Any:
    v = row.get("value")
    missing = not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v))
    sign = -1 if row.get("mode", "max") == "max" else 1
    return (row.get("status") != "ok", missing, sign * v if not missing else 0, row["job"])


def update_leaderboard(sweep_dir: Path, cfg: Optional[DictConfig] = None) -> Optional[Path]:
    """Rewrite the leaderboard of ``sweep_dir`` from its jobs' ``run.json``."""
    from filelock import FileLock

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return None
    with FileLock(str(sweep_dir / ".leaderboard.lock")):
        rows = sorted(_job_rows(sweep_dir), key=_sort_key)
        metric = next((r["metric"] for r in rows if r.get("metric")), None) or (
            str(cfg.leaderboard.metric) if cfg is not None else "metric")
        fields = ["rank", "job", "overrides", "status", metric, "stages", "error", "run_dir", "wandb"]
        with open(sweep_dir / "leaderboard.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(fields)
            for i, r in enumerate(rows, 1):
                w.writerow([i, r["job"], r.get("overrides", ""), r["status"], _fmt(r.get("value")),
                            r.get("stages", ""), r.get("error", ""), r.get("run_dir", ""), r.get("wandb", "")])
        lines = [
            f"# Leaderboard: {sweep_dir}",
            "",
            f"Sorted by `{metric}` ({rows[0].get('mode', 'max') if rows else 'max'}); failed jobs last.",
            "",
            f"| rank | job | overrides | status | {metric} | run dir | error |",
            "|---:|---|---|---|---:|---|---|",
        ]
        for i, r in enumerate(rows, 1):
            err = str(r.get("error", "")).replace("|", "\\|").replace("\n", " ")[:200]
            link = os.path.relpath(r.get("run_dir", ""), sweep_dir) if r.get("run_dir") else ""
            wandb = f" ([W&B]({os.path.relpath(r['wandb'], sweep_dir)}))" if r.get("wandb") else ""
            lines.append(f"| {i} | {r['job']} | `{r.get('overrides', '')}` | {r['status']} | {_fmt(r.get('value'))} "
                         f"| [{r['job']}]({link}){wandb} | {err} |")
        out = sweep_dir / "leaderboard.md"
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        from cvops.report import write_sweep

        write_sweep(sweep_dir)  # report.html: the leaderboard, each job linked to its own page
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


class LeaderboardCallback(Callback):
    """Hydra callback: final leaderboard when a sweep ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        out = update_leaderboard(Path(config.hydra.sweep.dir), config)
        if out is not None:
            log.info("leaderboard: %s", out)
