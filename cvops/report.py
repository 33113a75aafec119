"""One page per run: ``<run dir>/report.html``, the run's whole story, readable offline.

Written at the end of every run (also a failed one) from ``run.json`` and
the reports each stage left in the run dir: the recipe as composed, each
stage's status (ran, cached, skipped or failed, and why), its metrics, its
plots (curate histograms, training curves, PR curves and confusion matrix,
the export latency plot, the drift report's figures), its tables (per-class
AP, the latency table with the gate), links to its artifacts, the FiftyOne
dataset and the W&B run. Images sit beside the page (the run dir's stage
folders) and are referenced relatively, so the folder can be copied or
zipped as it is. A sweep's folder gets ``report.html`` with its leaderboard,
linking each job's page.

Every value shown comes from a recipe, a dataset or a model, so all of it is
escaped: a class named ``<script>`` is text on this page. ``cvops report
recipe=X`` (:mod:`cvops.commands.report`) finds the newest page (:func:`latest`).
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional

NAME = "report.html"
#: Report files of a stage shown inline as tables (markdown pipe tables) rather than as links.
TABLES = ("per_class_ap.md", "latency.md")

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;
color:#1d232a;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #dde2e8;
padding-bottom:4px}.muted{color:#5f6b78}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #dde2e8;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f5f8}
.ran{color:#16794c}.cached{color:#2f5fb3}.skipped{color:#8a6d00}.failed{color:#b3261e}
.figs{display:flex;flex-wrap:wrap;gap:12px}.figs figure{margin:0}.figs img{max-width:520px;
border:1px solid #dde2e8}figcaption{font-size:12px;color:#5f6b78}pre{background:#f6f8fa;padding:8px;
overflow:auto;max-height:420px}code{font-size:12px}td:nth-child(3){white-space:nowrap}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v[:20]) + (" ..." if len(v) > 20 else "")
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in list(v.items())[:20]) + (" ..." if len(v) > 20 else "")
    return str(v)


def _href(target: Path, base: Path) -> str:
    """A link from the page in ``base`` to ``target``: relative inside the folder, else a file URL."""
    try:
        rel = os.path.relpath(target, base)
    except ValueError:  # another drive
        rel = None
    if rel is not None and not rel.startswith(".."):
        return esc("/".join(rel.split(os.sep)))
    return esc(Path(target).resolve().as_uri())


def md_table(text: str) -> str:
    """A markdown pipe table (as cvops writes them) as an HTML table; other lines as paragraphs."""
    out: List[str] = []
    rows: List[List[str]] = []

    def flush() -> None:
        if rows:
            head, body = rows[0], [r for r in rows[1:] if not all(set(c.strip()) <= set(":-") for c in r)]
            out.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
            rows.clear()

    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|") and s.endswith("|"):
            rows.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", s[1:-1])])
            continue
        flush()
        if s:
            out.append(f"<p>{esc(s.lstrip('#').strip())}</p>")
    flush()
    return "\n".join(out)


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    rows = [(k, v) for k, v in metrics.items() if not (isinstance(v, (dict, list)) and len(v) > 40)]
    if not rows:
        return ""
    return ("<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(_fmt(v))}</td></tr>" for k, v in rows)
            + "</table>")


def _files(folder: Path) -> List[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def stage_section(name: str, row: Mapping[str, Any], run_dir: Path, stage: Any = None) -> str:
    """The page's section of one stage: status, headline, metrics, plots, tables, artifacts."""
    from cvops.summary import headline, seconds

    status = str(row.get("status", "?"))
    parts = [f'<h2 id="{esc(name)}">{esc(name)} <span class="{esc(status)}">{esc(status)}</span> '
             f'<span class="muted">{esc(seconds(row.get("seconds")))}</span></h2>']
    if row.get("fingerprint"):
        parts.append(f'<p class="muted">fingerprint <code>{esc(row["fingerprint"])}</code></p>')
    if row.get("reason"):
        parts.append(f"<p><b>{'why' if status != 'failed' else 'error'}:</b> {esc(row['reason'])}</p>")
    metrics = row.get("metrics") or {}
    text = headline(stage, metrics) if status in ("ran", "cached", "skipped") and stage is not None else ""
    if text:
        parts.append(f"<p><b>{esc(text)}</b></p>")
    extra = []
    if metrics.get("dataset_name"):
        extra.append(f"FiftyOne dataset <code>{esc(metrics['dataset_name'])}</code> (cvops app recipe=...)")
    if metrics.get("app_view"):
        extra.append(f"App view <code>{esc(metrics['app_view'])}</code>")
    arts = row.get("artifacts") or {}
    if arts.get("wandb_run"):
        extra.append(f"W&amp;B run <code>{esc(arts['wandb_run'])}</code> (offline: wandb sync it)")
    if extra:
        parts.append("<p>" + "<br>".join(extra) + "</p>")
    folder = run_dir / name
    files = _files(folder)
    images = [p for p in files if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".svg")]
    if images:
        parts.append('<div class="figs">' + "".join(
            f'<figure><img src="{_href(p, run_dir)}" alt="{esc(p.stem)}"><figcaption>{esc(p.relative_to(folder))}'
            "</figcaption></figure>" for p in images) + "</div>")
    for p in files:
        if p.name in TABLES:
            parts.append(f"<h3>{esc(p.name)}</h3>" + md_table(p.read_text(encoding="utf-8", errors="replace")))
    if metrics:
        parts.append("<details><summary>all metrics</summary>" + _metrics_table(metrics) + "</details>")
    links = [p for p in files if p not in images and p.suffix.lower() in (".html", ".csv", ".json", ".md", ".py")]
    store = [(k, v) for k, v in arts.items() if isinstance(v, str) and ("/" in v or os.sep in v)]
    if links or store:
        items = [f'<a href="{_href(p, run_dir)}">{esc(p.relative_to(folder))}</a>' for p in links]
        items += [f'{esc(k)}: <a href="{_href(Path(v), run_dir)}">{esc(v)}</a>' for k, v in store[:30]]
        parts.append("<details><summary>files and artifacts</summary><p>" + "<br>".join(items) + "</p></details>")
    return "\n".join(parts)


def render(run: Mapping[str, Any], run_dir: Path, stages: Optional[Mapping[str, Any]] = None) -> str:
    """The page of one run (``run``: its ``run.json``)."""
    from cvops.summary import headline, seconds

    stages = stages or {}
    title = f"cvops · {run.get('project', '')} · {run.get('status', '?')}"
    rows = run.get("stages", {})
    summary = "".join(
        f'<tr><td><a href="#{esc(n)}">{esc(n)}</a></td><td class="{esc(r.get("status", ""))}">'
        f'{esc(r.get("status", "?"))}</td><td>{esc(seconds(r.get("seconds")))}</td><td>'
        f'{esc(headline(stages.get(n), r.get("metrics")) if r.get("status") in ("ran", "cached", "skipped") else r.get("reason", ""))}'
        "</td></tr>" for n, r in rows.items())
    composed = run_dir / ".hydra" / "config.yaml"
    recipe = composed.read_text(encoding="utf-8", errors="replace") if composed.is_file() else ""
    head = [f"<h1>{esc(title)}</h1>",
            f'<p class="muted">recipe <code>{esc(run.get("recipe"))}</code> · started {esc(run.get("started", ""))}'
            f' · {esc(seconds(run.get("seconds")))} · git {esc(str(run.get("git_sha") or "-")[:12])} · '
            f"overrides <code>{esc(' '.join(run.get('overrides', [])))}</code></p>",
            "<table><tr><th>stage</th><th>status</th><th>time</th><th>result</th></tr>" + summary + "</table>"]
    body = [stage_section(n, r, run_dir, stages.get(n)) for n, r in rows.items()]
    tail = []
    if recipe:
        tail.append("<h2>recipe as composed</h2><details><summary>.hydra/config.yaml</summary><pre>"
                    f"{esc(recipe)}</pre></details>")
    versions = run.get("versions") or {}
    if versions:
        tail.append("<details><summary>versions</summary>" + _metrics_table(versions) + "</details>")
    tail.append(f'<p class="muted">written {esc(time.strftime("%Y-%m-%d %H:%M:%S"))}; run.json and cvops.log '
                "beside this page</p>")
    return _page(title, head + body + tail)


def _page(title: str, parts: Iterable[str]) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src \'self\' file: data:; '
            "style-src 'unsafe-inline'\">"
            f"<style>{_CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")


def write(run_dir: Path, stages: Optional[Mapping[str, Any]] = None) -> Optional[Path]:
    """Write ``<run_dir>/report.html`` from its ``run.json`` (None when there is no run.json)."""
    run_dir = Path(run_dir)
    try:
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    out = run_dir / NAME
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(render(run, run_dir, stages), encoding="utf-8")
    os.replace(tmp, out)
    return out


def write_sweep(sweep_dir: Path) -> Optional[Path]:
    """``<sweep_dir>/report.html``: the leaderboard, each job linked to its own page."""
    sweep_dir = Path(sweep_dir)
    board = sweep_dir / "leaderboard.csv"
    if not board.is_file():
        return None
    with open(board, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    fields = list(rows[0]) if rows else []
    shown = [k for k in fields if k not in ("run_dir", "wandb")]
    trs = []
    for r in rows:
        cells = []
        for k in shown:
            v = r.get(k, "")
            if k == "job" and r.get("run_dir"):
                page = Path(r["run_dir"]) / NAME
                v_html = f'<a href="{_href(page, sweep_dir)}">{esc(v)}</a>'
            else:
                v_html = esc(v)
            cells.append(f"<td>{v_html}</td>")
        trs.append(f'<tr class="{esc(r.get("status", ""))}">' + "".join(cells) + "</tr>")
    table = ("<table><tr>" + "".join(f"<th>{esc(k)}</th>" for k in shown) + "</tr>" + "".join(trs) + "</table>")
    title = f"cvops sweep · {sweep_dir.name}"
    out = sweep_dir / NAME
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(_page(title, [f"<h1>{esc(title)}</h1>", f'<p class="muted">{esc(sweep_dir)}</p>', table]),
                   encoding="utf-8")
    os.replace(tmp, out)
    return out


def latest(outputs: Path, project: str) -> Optional[Path]:
    """The newest ``report.html`` under ``outputs/<project>/`` (runs and sweeps)."""
    root = Path(outputs) / project
    pages = [p for p in root.rglob(NAME) if (p.parent / "run.json").is_file() or (p.parent / "leaderboard.csv").is_file()
             ] if root.is_dir() else []  # runs' and sweeps' pages, not a stage's own report (monitor/report.html)
    return max(pages, key=lambda p: p.stat().st_mtime, default=None)


__all__ = ["write", "write_sweep", "render", "latest", "md_table"]
