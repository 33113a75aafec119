"""The run report (report.html): what it shows, and that nothing from a recipe or dataset becomes markup."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from cvops.report import latest, md_table, render, write, write_sweep
from cvops.stages import BUILTIN

HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def _run_dir(root: Path, name: str = "r1", status: str = "ok") -> Path:
    d = root / "outputs" / "demo" / name
    (d / "evaluate").mkdir(parents=True)
    (d / "evaluate" / "pr_curves.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (d / "evaluate" / "per_class_ap.md").write_text(f"| class | AP |\n|---|---:|\n| {HOSTILE} | 0.5 |\n")
    (d / ".hydra").mkdir()
    (d / ".hydra" / "config.yaml").write_text(f"project: demo\ndata:\n  classes: ['{HOSTILE}']\n")
    run = {"project": "demo", "recipe": HOSTILE, "status": status, "seconds": 75.0, "overrides": [f"x={HOSTILE}"],
           "stages": {
               "curate": {"status": "cached", "seconds": 0.1, "fingerprint": "abc",
                          "metrics": {"images_kept": 3, "dataset_name": HOSTILE, "classes": [HOSTILE]}},
               "evaluate": {"status": "ran", "seconds": 9.0, "metrics": {"mAP": 0.31, "mAP50": 0.55}},
               "export": {"status": "failed", "seconds": 2.0, "reason": f"gate failed for {HOSTILE}"}}}
    (d / "run.json").write_text(json.dumps(run))
    return d


def test_page_shows_every_stage_and_escapes_what_it_shows(tmp_path: Path) -> None:
    d = _run_dir(tmp_path)
    page = write(d, {s.name: s for s in BUILTIN})
    text = page.read_text()
    assert "<script" not in text and "onerror=" not in text.replace("onerror=alert", "")  # no markup from data
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    for stage in ("curate", "evaluate", "export"):
        assert f'<h2 id="{stage}">' in text
    assert '<img src="evaluate/pr_curves.png"' in text  # beside the page, relative
    assert "test mAP 0.310, mAP50 0.550" in text and "gate failed for &lt;script&gt;" in text
    assert "<th>class</th><th>AP</th>" in text  # the markdown table as a table
    assert "Content-Security-Policy" in text


def test_markdown_tables_and_paragraphs() -> None:
    out = md_table("# Title\n\n| a | b |\n|:--|--:|\n| 1 | x\\|y |\ntext after")
    assert out.startswith("<p>Title</p>") and "<td>x|y</td>" in out and out.endswith("<p>text after</p>")
    assert ":--" not in out


def test_sweep_page_links_each_job_and_latest_finds_run_pages(tmp_path: Path) -> None:
    job = _run_dir(tmp_path, "multirun/s1/0")
    write(job)
    (job / "monitor").mkdir()
    (job / "monitor" / "report.html").write_text("the drift report")  # a stage's page: not a run page
    sweep = job.parent
    with open(sweep / "leaderboard.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "job", "overrides", "status", "evaluate.val_mAP", "run_dir"])
        w.writerow([1, "0", HOSTILE, "ok", "0.5", str(job)])
    page = write_sweep(sweep)
    text = page.read_text()
    assert '<a href="0/report.html">0</a>' in text and "<script" not in text
    assert latest(tmp_path / "outputs", "demo") == page
    assert render(json.loads((job / "run.json").read_text()), job)  # renders without stage declarations too


def test_cvops_report_prints_the_newest_page_or_says_what_to_run(tmp_path: Path, capsys) -> None:
    from cvops.cli import main  # `cvops report ...`, in this process

    outputs = tmp_path / "outputs"
    args = ["report", "recipe=quickstart", "project=demo", "--print", "--outputs", str(outputs)]
    assert main(args) == 2 and "run the recipe first" in capsys.readouterr().err
    write(_run_dir(tmp_path, "r1"))
    newer = write(_run_dir(tmp_path, "r2"))
    assert main(args) == 0 and capsys.readouterr().out.strip() == str(newer.resolve())
