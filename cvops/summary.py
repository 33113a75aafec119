"""What a run says about itself in words: each stage's headline and the closing summary.

A stage's headline (``Stage.summary``, ``"module:function"`` of
``f(metrics) -> str``) is the short result a person looks for: curate's
counts, the test mAP, the export gate and latency, the drift verdict. The
runner prints it on the stage's finish line and in the summary table at the
end of every run, followed by the next commands worth trying (``Stage.next``).

These functions read ``run.json``'s metrics only; they are not part of any
stage's code version (rewording a line does not rebuild an artifact).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Callable, List, Mapping, Optional, Sequence

log = logging.getLogger("cvops")


def _pct(v: Any) -> str:
    return "?" if v is None else f"{float(v):.3f}"


def curate(m: Mapping[str, Any]) -> str:
    splits = m.get("splits") or {}
    parts = [f"{m.get('images_kept', '?')} images, {m.get('boxes_kept', '?')} boxes kept",
             f"{m.get('images_quarantined', 0)} quarantined, {m.get('images_deduplicated', 0)} duplicates"]
    if splits:
        parts.append("/".join(str(splits[k]) for k in splits) + f" {'/'.join(splits)}")
    return "; ".join(parts)


def train(m: Mapping[str, Any]) -> str:
    out = f"{m.get('epochs', '?')} epochs"
    tb = m.get("time_budget")
    if isinstance(tb, dict):
        out += (f" (train.max_minutes={tb.get('budget_s', 0) / 60:g}: {tb.get('planned_epochs')} planned"
                + ("; the budget ran out, stopped" if tb.get("stopped_at_budget") else "") + ")")
    if m.get("best_val_mAP50") is not None:
        out += f"; best val mAP50 {_pct(m['best_val_mAP50'])} (epoch {m.get('best_epoch', '?')})"
    return out


def evaluate(m: Mapping[str, Any]) -> str:
    if m.get("mAP") is None:
        return f"val mAP {_pct(m.get('val_mAP'))}, mAP50 {_pct(m.get('val_mAP50'))}"
    out = f"test mAP {_pct(m.get('mAP'))}, mAP50 {_pct(m.get('mAP50'))}"
    if m.get("segm_mAP") is not None:  # instance segmentation: the masks' score too
        out += f"; mask mAP {_pct(m['segm_mAP'])}, mAP50 {_pct(m.get('segm_mAP50'))}"
    return out


def export(m: Mapping[str, Any]) -> str:
    drops = [f"ONNX {m['map_drop']:+.2f}" if m.get("map_drop") is not None else None,
             f"INT8 {m['int8_map_drop']:+.2f}" if m.get("int8_map_drop") is not None else None,
             f"TensorRT {m['trt_map_drop']:+.2f}" if m.get("trt_map_drop") is not None else None]
    out = f"gate {m.get('gate', '?')} (mAP drop, points: {', '.join(d for d in drops if d)})"
    masks = [f"ONNX {m['segm_map_drop']:+.2f}" if m.get("segm_map_drop") is not None else None,
             f"INT8 {m['int8_segm_map_drop']:+.2f}" if m.get("int8_segm_map_drop") is not None else None]
    if any(masks):
        out += f" (mask mAP drop: {', '.join(d for d in masks if d)})"
    speed = [f"ONNX {m['onnx_speedup']:.2f}x" if m.get("onnx_speedup") else None,
             f"INT8 {m['int8_speedup']:.2f}x" if m.get("int8_speedup") else None]
    if any(speed):
        out += f"; speed-up vs PyTorch {', '.join(s for s in speed if s)}"
    return out


def serve(m: Mapping[str, Any]) -> str:
    return "server stopped" if m.get("stopped") else ""


def monitor(m: Mapping[str, Any]) -> str:
    verdict = (f"DRIFT in {', '.join(m.get('drift_features') or [])}" if m.get("drift_detected") else "no drift")
    return (f"{verdict} on {m.get('window_images', '?')} images; {m.get('edge_cases', 0)} edge cases "
            f"-> {m.get('review_dataset', 'review')}")


def headline(stage: Any, metrics: Optional[Mapping[str, Any]]) -> str:
    """``stage``'s one-line result from its metrics ('' when it has none or its summary fails)."""
    if not metrics or not getattr(stage, "summary", None):
        return ""
    mod, _, fun = stage.summary.partition(":")
    try:
        fn: Callable[[Mapping[str, Any]], str] = getattr(importlib.import_module(mod), fun)
        return str(fn(metrics))
    except Exception as e:  # a summary must never fail a run
        logging.getLogger("cvops.detail").warning("summary of %s failed: %s", getattr(stage, "name", "?"), e)
        return ""


def seconds(s: Optional[float]) -> str:
    """A duration as a person reads it: "6.1 s", "14 min 38 s" (the finish lines and the summary table)."""
    if s is None:
        return ""
    return f"{s:.1f} s" if s < 120 else f"{int(s) // 60} min {int(s) % 60:02d} s"


def closing(data: Mapping[str, Any], stages: Mapping[str, Any], args: str, run_dir: Any) -> List[str]:
    """The lines printed at the end of a run: a table of every stage of ``run.json``, then what to try next."""
    rows = data.get("stages", {})
    lines = ["", f"cvops · {data.get('project', '')} · {data.get('status', '?')} in {seconds(data.get('seconds'))}"]
    width = max([len(n) for n in rows] + [5])
    for name, row in rows.items():
        text = headline(stages.get(name), row.get("metrics")) if row.get("status") in ("ran", "cached") else ""
        if row.get("status") in ("skipped", "failed"):
            text = str(row.get("reason", ""))[:160]
        lines.append(f"  {name:<{width}}  {row.get('status', '?'):<7}  {seconds(row.get('seconds')):>11}  {text}".rstrip())
    hints = next_steps(rows, stages, args)
    if hints:
        lines.append("next:")
        lines += [f"  {h}" for h in hints]
    lines.append(f"(run dir {run_dir}: report.html, run.json, cvops.log, each stage's reports)")
    return lines


def next_steps(rows: Mapping[str, Any], stages: Mapping[str, Any], args: str) -> List[str]:
    """Each finished stage's ``next`` hints, formatted with the command line's arguments and its artifacts.

    The hints are printed to be run as they are: a leading ``cvops`` becomes :func:`program` (the venv's
    script need not be on PATH) and ``{open}`` a file opener this machine has (:func:`opener`; none: the
    path alone).
    """
    out: List[str] = []
    prog, opens = program(), opener()
    for name, row in rows.items():
        if row.get("status") not in ("ran", "cached") or name not in stages:
            continue
        for template in getattr(stages[name], "next", ()) or ():
            try:
                line = template.format(args=args, artifacts=row.get("artifacts", {}), open=opens and opens + " ")
            except (KeyError, IndexError, AttributeError):
                continue
            if line == "cvops" or line.startswith("cvops "):
                line = prog + line[len("cvops"):]
            if line not in out:
                out.append(line)
    return out


def program() -> str:
    """How to run ``cvops`` again here, as a shell command: ``cvops`` when that name on PATH is the script this
    process was started as, else that script's path, or ``<python> -m cvops`` for ``python -m cvops``."""
    import os
    import shlex
    import shutil
    import sys

    started = sys.argv[0] if sys.argv and sys.argv[0] else ""
    on_path = shutil.which("cvops")
    try:
        if on_path and started and os.path.samefile(on_path, started):
            return "cvops"
    except OSError:
        pass
    if os.path.basename(started) == "cvops" and os.path.isfile(started):
        return shlex.quote(os.path.abspath(started))
    python = sys.executable or "python"
    try:
        found = shutil.which(os.path.basename(python))
        if found and os.path.samefile(found, python):
            python = os.path.basename(python)
    except OSError:
        pass
    return f"{shlex.quote(python)} -m cvops"


def opener() -> str:
    """The command that opens a file in the desktop's default application here, or '' (none: print the path).

    ``open`` on macOS; ``xdg-open`` where it is installed and a display is there to open on."""
    import os
    import shutil
    import sys

    if sys.platform == "darwin":
        return "open"
    if shutil.which("xdg-open") and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "xdg-open"
    return ""


def command_args(recipe: Optional[str], overrides: Sequence[str]) -> str:
    """``recipe=X`` plus the overrides that select the same artifacts (not ``stages=``/``hydra.*``), quoted."""
    keep = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~") in ("stages",)
            and not o.lstrip("+~").startswith("hydra.") and not o.startswith("recipe=")]
    import shlex

    return " ".join([*([f"recipe={recipe}"] if recipe else []), *(shlex.quote(o) for o in keep)])


__all__ = ["headline", "seconds", "closing", "next_steps", "command_args", "program", "opener", "curate", "train", "evaluate", "export", "serve",
           "monitor"]
