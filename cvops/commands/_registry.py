"""What ``cvops promote``, ``cvops rollback`` and ``cvops models`` print about the registry
(:mod:`cvops.store.registry` keeps the aliases and their history)."""

from __future__ import annotations

import sys
from typing import Any, Dict, List


def report_damage(reg: Any) -> None:
    """Each line of the history the registry could not read, as a warning (the valid records were used)."""
    for line in reg.damage:
        print(f"cvops: warning: {line} (the registry uses the valid records; the file is the record, so fix or "
              "remove that line by hand)", file=sys.stderr)


def metrics_text(info: Dict[str, Any]) -> str:
    """What a promotion recorded, in a few words: dataset version, gate, test mAP and mAP50."""
    parts = [f"dataset {info['dataset_version']}" if info.get("dataset_version") else "",
             f"gate {info['gate']}" if info.get("gate") else "",
             f"test mAP {info['mAP']:.3f}" if isinstance(info.get("mAP"), (int, float)) else "",
             f"mAP50 {info['mAP50']:.3f}" if isinstance(info.get("mAP50"), (int, float)) else ""]
    return ", ".join(p for p in parts if p)


def table(project: str, current: Dict[str, Dict[str, Any]], history: List[Any]) -> List[str]:
    """The lines of ``cvops models``: each alias and what it points at, then the history, newest first."""
    if not current:
        return [f"{project}: no aliases yet (cvops promote recipe=... --alias production)"]
    lines = [f"{project}: aliases"]
    w = max(len(a) for a in current)
    for alias, e in sorted(current.items()):
        lines.append(f"  {alias:<{w}}  {e['export']}  {metrics_text(e)}  ({e.get('action')} {e.get('time')} by "
                     f"{e.get('user')})")
    lines.append("history (newest first)")
    for ev in reversed(history):
        msg = f"  \"{ev.message}\"" if ev.message else ""
        lines.append(f"  {ev.time}  {ev.action:<8}  {ev.alias:<{w}}  {ev.export}  <- {ev.previous or '-'}  "
                     f"{ev.user}{msg}")
    return lines
