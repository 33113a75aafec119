"""The `cvops` command itself: --cfg job, python -m, subcommands, hydra.run.dir."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import yaml


def test_cfg_job_prints_the_whole_composed_spec(cvops):
    r = cvops("recipe=quickstart", "--cfg", "job")
    assert r.returncode == 0, r.stderr
    spec = yaml.safe_load(r.stdout)
    assert spec["project"] == "quickstart"
    # group defaults and schema defaults are all visible, not hidden in code
    assert spec["train"]["max_epochs"] == 30 and spec["train"]["optimizer"] == "AdamW"
    assert spec["curate"]["dedup"]["hamming_threshold"] == 4
    assert spec["export"]["gate"]["max_map_drop"] == 0.5
    assert spec["tracker"]["_target_"] == "cvops.track.WandbTracker"
    assert not (cvops.workdir / "outputs").exists()


def test_cfg_job_printed_from_the_preflight_equals_hydras_own(cvops):
    """``--cfg job`` prints the config the preflight composed (composing once); Hydra's own printing
    (reached with ``--package _global_``) must give the same text, overrides, interpolations and all."""
    for line in (["recipe=quickstart"], ["recipe=bccd", "train.lr=0.01", "export=onnx_int8", "model=yolox_tiny"]):
        ours = cvops(*line, "--cfg", "job")
        hydras = cvops(*line, "--cfg", "job", "--package", "_global_")
        assert ours.returncode == hydras.returncode == 0, ours.stderr + hydras.stderr
        assert ours.stdout == hydras.stdout and "${" in ours.stdout  # interpolations stay unresolved in both


def test_cvops_script_and_python_m_agree(cvops):
    exe = shutil.which("cvops", path=str(sys.executable.rsplit("/", 1)[0]))
    assert exe, "the cvops console script is installed next to the interpreter"
    a = subprocess.run([exe, "recipe=quickstart", "--cfg", "job"], capture_output=True, text=True, cwd=cvops.workdir)
    b = cvops("recipe=quickstart", "--cfg", "job")
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout


def test_run_writes_run_json_where_hydra_run_dir_says(cvops):
    target = cvops.workdir / "my_run"
    r = cvops("recipe=quickstart", f"hydra.run.dir={target}", "data.synthetic.num_images=12", "data.synthetic.videos=0",
              "stages=[curate]")
    assert r.returncode == 0, r.stdout + r.stderr
    run = json.loads((target / "run.json").read_text())
    assert run["status"] == "ok" and run["recipe"] == "quickstart"
    assert "recipe=quickstart" in run["overrides"]
    assert (target / ".hydra" / "config.yaml").is_file() and (target / "cvops.log").is_file()
    lines = r.stdout.splitlines()  # one concise line per stage
    assert any(l.split()[:2] == ["curate", "ran"] for l in lines), r.stdout


def test_recipes_subcommand_lists_user_dirs(cvops, tmp_path):
    d = tmp_path / "team"
    d.mkdir()
    (d / "parts.yaml").write_text("# @package _global_\nproject: parts\n")
    r = cvops("recipes", env={"CVOPS_RECIPE_PATH": str(d)})
    assert r.returncode == 0
    assert "parts" in r.stdout and "quickstart" in r.stdout and str(d) in r.stdout
    r = cvops("recipe=parts", "--cfg", "job", env={"CVOPS_RECIPE_PATH": str(d)})
    assert r.returncode == 0 and yaml.safe_load(r.stdout)["project"] == "parts"


def test_doctor_reports_every_component(cvops):
    r = cvops("doctor", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("torch", "mmcv", "mmdet", "fiftyone + MongoDB", "ONNX Runtime", "TensorRT", "W&B"):
        assert name in r.stdout
    assert "compiled ops work" in r.stdout and "reachable" in r.stdout
