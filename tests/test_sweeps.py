"""Hydra multirun: shared upstream artifacts, failing jobs, leaderboard, launchers."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest


def _sweep_dir(cvops):
    dirs = sorted(cvops.workdir.glob("outputs/*/multirun/*/*"))
    assert dirs, list(cvops.workdir.rglob("*"))
    return dirs[-1]


def test_sweep_shares_curate_and_ranks_jobs(cvops):
    r = cvops("-m", "recipe=quickstart", "stages=[curate,train,evaluate]", "train.lr=0.01,0.04,0.02,0.03", test_stages=True)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = [c.split()[0] for c in cvops.calls()]
    assert calls.count("curate") == 1 and calls.count("train") == 4
    sweep = _sweep_dir(cvops)
    rows = list(csv.DictReader(open(sweep / "leaderboard.csv")))
    assert [row["overrides"] for row in rows] == [f"recipe=quickstart stages=[curate,train,evaluate] train.lr={lr}"
                                                  for lr in ("0.04", "0.03", "0.02", "0.01")]
    assert [float(row["evaluate.val_mAP"]) for row in rows] == [0.4, 0.3, 0.2, 0.1]
    md = (sweep / "leaderboard.md").read_text()
    assert "| 1 | 1 |" in md and "train.lr=0.04" in md
    page = (sweep / "report.html").read_text()  # the sweep's page links each job's own page
    for job in ("0", "1", "2", "3"):
        assert f'<a href="{job}/report.html">{job}</a>' in page and (sweep / job / "report.html").is_file()


def test_failing_job_does_not_sink_the_others_and_leaderboard_is_written(cvops):
    r = cvops("-m", "recipe=quickstart", "stages=[curate,train,evaluate]", "train.lr=0.01,99,0.02", test_stages=True)
    assert r.returncode != 0  # the sweep reports the failure ...
    sweep = _sweep_dir(cvops)
    rows = list(csv.DictReader(open(sweep / "leaderboard.csv")))
    assert [row["status"] for row in rows] == ["ok", "ok", "failed"]  # ... after running every job
    assert rows[2]["overrides"].endswith("train.lr=99") and "NaN" in rows[2]["error"]
    statuses = {json.loads((sweep / j / "run.json").read_text())["status"] for j in ("0", "1", "2")}
    assert statuses == {"ok", "failed"}


def test_local_parallel_launcher_runs_jobs_in_worker_processes(cvops):
    r = cvops("-m", "hydra/launcher=local_parallel", "recipe=quickstart", "stages=[curate]",
              "data.synthetic.num_images=12", "data.synthetic.videos=0", "data.synthetic.seed=1,2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Joblib.Parallel" in r.stdout + r.stderr
    sweep = _sweep_dir(cvops)
    rows = list(csv.DictReader(open(sweep / "leaderboard.csv")))
    assert len(rows) == 2 and {row["status"] for row in rows} == {"ok"}
    runs = [json.loads((sweep / j / "run.json").read_text()) for j in ("0", "1")]
    assert runs[0]["stages"]["curate"]["fingerprint"] != runs[1]["stages"]["curate"]["fingerprint"]
    assert {r["stages"]["curate"]["status"] for r in runs} == {"ran"}


def test_optuna_sweeper_preset_maximises_the_headline_metric(cvops):
    r = cvops("-m", "hydra/sweeper=tpe", "hydra.sweeper.n_trials=4", "train.lr=interval(0.01,0.09)",
              "recipe=quickstart", "stages=[curate,train,evaluate]", test_stages=True)
    assert r.returncode == 0, r.stdout + r.stderr
    sweep = _sweep_dir(cvops)
    rows = list(csv.DictReader(open(sweep / "leaderboard.csv")))
    assert len(rows) == 4
    import yaml

    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(float(row["evaluate.val_mAP"]) for row in rows)
    assert [c.split()[0] for c in cvops.calls()].count("curate") == 1


def test_slurm_path_through_submitits_local_executor(cvops):
    """The Slurm launcher's path on one machine (issue #12): submitit pickles each job, runs it in a process
    of its own and reads its result back, here through its local executor (hydra/launcher=slurm_local, the
    slurm preset's resource keys); a failing job is a failed row, the others run."""
    from cvops.config import compose_config

    slurm = compose_config(["project=t", "hydra/launcher=slurm"], hydra_node=True).hydra.launcher
    local = compose_config(["project=t", "hydra/launcher=slurm_local"], hydra_node=True).hydra.launcher
    assert slurm._target_.endswith(".SlurmLauncher") and local._target_.endswith(".LocalLauncher")
    assert set(local) <= set(slurm)  # nothing the local run sets is foreign to the slurm preset
    r = cvops("-m", "hydra/launcher=slurm_local", "recipe=quickstart", "stages=[curate]", "data.synthetic.videos=0",
              "data.synthetic.num_images=12,0", timeout=600)
    assert r.returncode != 0  # the failing job is reported...
    assert "Submitit 'local' sweep output dir" in r.stdout + r.stderr
    sweep = _sweep_dir(cvops)
    rows = list(csv.DictReader(open(sweep / "leaderboard.csv")))
    assert [(row["job"], row["status"]) for row in rows] == [("0", "ok"), ("1", "failed")]  # ...after both ran
    assert "no images found" in rows[1]["error"]
    results = sorted((sweep / ".submitit").glob("*/*_result.pkl"))
    assert len(results) == 2  # each job went through submitit, in its own process
    run = json.loads((sweep / "0" / "run.json").read_text())
    assert run["stages"]["curate"]["status"] == "ran" and run["stages"]["curate"]["metrics"]["images_kept"] > 0


def test_ray_launcher_on_a_two_node_cluster_against_the_s3_store(cvops, tmp_path, monkeypatch, s3):
    """hydra/launcher=ray joins a running 2-node Ray cluster (started here, on this machine) and runs a 4-job sweep
    against an S3 store (a real S3-compatible server): curate is built once for all jobs, the job with lr=99
    fails as a failed row while the others finish, and the leaderboard is the one the joblib launcher gives
    for the same sweep."""
    import ray.cluster_utils as ray_utils

    import shutil
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    # the cluster's Python processes get the test stages the way a team's cluster gets its environment: when it
    # starts (a recipe cannot load code on the workers; see test_ray_init_cannot_load_code)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("try:\n    from helpers.stages import register\n    register()\n"
                                           "except Exception:\n    pass\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(Path(__file__).resolve().parent)]))
    cluster = ray_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    try:
        store = f"s3://{s3.bucket()}/store"
        env = {**s3.env, "CVOPS_STORE": store, "CVOPS_CACHE_DIR": str(tmp_path / "cache"), "RAY_TMPDIR": ray_tmp}
        sweep = ("-m", "recipe=quickstart", "stages=[curate,train,evaluate]", "train.lr=0.01,0.04,99,0.02")
        r = cvops(*sweep, "hydra/launcher=ray", f"hydra.launcher.address={cluster.address}",
                  test_stages=True, env=env, timeout=300)
        assert r.returncode != 0, r.stdout + r.stderr  # the failed job is reported ...
        assert "joining the cluster at" in r.stdout + r.stderr
        ray_dir = _sweep_dir(cvops)
        assert (ray_dir / "leaderboard.csv").exists(), r.stdout[-3000:] + r.stderr[-5000:]
        ray_rows = list(csv.DictReader(open(ray_dir / "leaderboard.csv")))
        assert [row["status"] for row in ray_rows] == ["ok", "ok", "ok", "failed"]  # ... after every job ran
        assert ray_rows[3]["overrides"].endswith("train.lr=99") and "NaN" in ray_rows[3]["error"]
        calls = [c.split() for c in cvops.calls()]
        assert [c[0] for c in calls].count("curate") == 1, calls  # one curate for the whole sweep
        assert len({c[2] for c in calls if c[0] == "train"}) == 4  # each job in its own worker process
        runs = [json.loads((ray_dir / j / "run.json").read_text()) for j in "0123"]
        assert sorted(r["stages"]["curate"]["status"] for r in runs).count("ran") == 1

        # the same sweep through the joblib launcher (its worker processes get the test stages the same way)
        r = cvops(*sweep, "hydra/launcher=local_parallel", test_stages=True,
                  env={**env, "CVOPS_CACHE_DIR": str(tmp_path / "cache-joblib"), "PYTHONPATH": os.environ["PYTHONPATH"]})
        assert "Joblib.Parallel" in r.stdout + r.stderr
        joblib_dir = _sweep_dir(cvops)
        assert joblib_dir != ray_dir
        joblib_rows = list(csv.DictReader(open(joblib_dir / "leaderboard.csv")))
        keep = ("rank", "job", "overrides", "status", "evaluate.val_mAP")
        assert [{k: row[k] for k in keep} for row in ray_rows] == [{k: row[k] for k in keep} for row in joblib_rows]
    finally:
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_ray_init_cannot_load_code(cvops):
    for bad in ("+hydra.launcher.init.runtime_env.worker_process_setup_hook=os.system",
                "+hydra.launcher.init.runtime_env.pip=[evil]", "+hydra.launcher.init.runtime_env.env_vars.PYTHONPATH=/x",
                "+hydra.launcher.init._system_config={}"):
        r = cvops("-m", "hydra/launcher=ray", "recipe=quickstart", "stages=[curate]", bad)
        assert r.returncode == 2 and "is not allowed" in r.stderr and bad.split("=")[0].lstrip("+") in r.stderr, bad
