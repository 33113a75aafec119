"""Every ``cvops <verb>`` composes its recipe once, on the one prologue, and says what to run when an
artifact is missing; a user's error is one line and exit status 2.

Compositions are counted where they happen: calls of cvops' one compose function
(:func:`cvops.config.compose_config`) and the compositions Hydra itself makes (each goes through its
config loader, whoever asks). The commands run in this process (``cvops.cli.main``), the whole run in
its own (``helpers/count_compose.py``: a run configures logging, as the real command does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from cvops import cli, config
from cvops.commands import COMMANDS

HELPERS = Path(__file__).resolve().parent / "helpers"


@pytest.fixture
def count(monkeypatch: pytest.MonkeyPatch) -> Dict[str, int]:
    """Counts compositions in this process, with the compose cache off (each composition is Hydra's)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    monkeypatch.setenv("CVOPS_COMPOSE_CACHE", "0")
    seen = {"compose_config": 0, "hydra": 0}

    def counted(key: str, real):
        def call(*args, **kwargs):
            seen[key] += 1
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(config, "compose_config", counted("compose_config", config.compose_config))
    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration", counted("hydra", ConfigLoaderImpl.load_configuration))
    return seen


def line(tmp_path: Path, *extra: str) -> List[str]:
    return ["recipe=quickstart", "project=cmdtest", f"paths.store={tmp_path / 'store'}", *extra]


#: each verb with a command line that composes and then stops (nothing built, nothing to serve): its exit
#: status, and what its message must say
CASES = {
    "models": ([], 0, "cmdtest: no aliases yet"),
    "promote": (["--alias", "production"], 2, "stages=[curate,train,export], or name one with --export"),
    "rollback": (["--alias", "production"], 2, "alias 'production' is not set"),
    "report": (["--print", "--outputs", "{tmp}/outputs"], 2, "no report.html under"),
    "train-worker": ([], 2, "train.launcher=pytorch and train.nnodes=N"),
    "serve": ([], 2, "stages=[curate,train,export]"),
    "app": ([], 2, "stages=[curate]"),
    "review": ([], 2, "this store has no edge cases yet"),
    "annotate": ([], 2, "stages=[curate]"),
    "loop": ([], 2, "the loop needs a champion"),
    "alerts": ([], 0, "alert: CvopsDrift"),
    "store": (["gc"], 0, "nothing to remove"),
}


def test_every_verb_is_a_command_module_and_has_a_case():
    assert set(COMMANDS) == {*CASES, "doctor", "recipes"}
    for verb, module in COMMANDS.items():
        import importlib

        mod = importlib.import_module(f"cvops.commands.{module}")
        public = [n for n in vars(mod) if not n.startswith("_") and callable(getattr(mod, n))
                  and getattr(getattr(mod, n), "__module__", None) == mod.__name__]
        assert public == ["main"], f"cvops.commands.{module} exposes {public}: main(argv) and nothing else"


@pytest.mark.parametrize("verb", sorted(CASES))
def test_each_command_composes_once(verb: str, tmp_path: Path, count: Dict[str, int], capsys) -> None:
    flags, status, says = CASES[verb]
    argv = [verb, *(f.format(tmp=tmp_path) for f in flags), *line(tmp_path)]
    assert cli.main(argv) == status
    out = capsys.readouterr()
    assert says in (out.out if status == 0 else out.err), out
    if status:
        assert out.err.startswith("cvops: error: ") and "Traceback" not in out.err
    assert count == {"compose_config": 1, "hydra": 1}, f"cvops {verb} composed {count}"


def test_recipes_composes_nothing(count: Dict[str, int], capsys) -> None:
    assert cli.main(["recipes"]) == 0 and "quickstart" in capsys.readouterr().out
    assert count == {"compose_config": 0, "hydra": 0}


def test_a_command_refuses_a_typo_before_anything(tmp_path: Path, count: Dict[str, int], capsys) -> None:
    assert cli.main(["serve", *line(tmp_path, "serve.prot=9000")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cvops: error: unknown key 'serve.prot'") and "'serve.port'" in err
    assert not (tmp_path / "store").exists()
    with pytest.raises(SystemExit) as stop:  # argparse's usage error, not an override
        cli.main(["models", *line(tmp_path), "--frobnicate"])
    assert stop.value.code == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


def test_cfg_job_composes_once(count: Dict[str, int], capsys) -> None:
    assert cli.main(["recipe=quickstart", "--cfg", "job"]) == 0
    assert "project: quickstart" in capsys.readouterr().out
    assert count == {"compose_config": 1, "hydra": 1}


def _counted_run(cvops, tmp_path: Path, *args: str, cache: bool = False) -> tuple:
    counts = tmp_path / "counts.json"
    env = {**cvops.env, "CVOPS_TEST_COMPOSE_COUNT": str(counts), **({} if cache else {"CVOPS_COMPOSE_CACHE": "0"})}
    r = subprocess.run([sys.executable, str(HELPERS / "count_compose.py"), *args], cwd=cvops.workdir, env=env,
                       capture_output=True, text=True, timeout=300)
    return r, json.loads(counts.read_text())


def test_a_run_composes_once_and_hydra_never_again(cvops, tmp_path: Path) -> None:
    """One run: the preflight composes, the job runs on that composition (run dir, .hydra/ files as Hydra's
    main writes them); with a warm compose cache, nothing composes at all."""
    run_dir = tmp_path / "run"
    args = ("recipe=quickstart", "stages=[]", f"hydra.run.dir={run_dir}")
    r, n = _counted_run(cvops, tmp_path, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert n == {"compose_config": 1, "hydra": 1}, n
    assert {p.name for p in (run_dir / ".hydra").iterdir()} == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    hydra_yaml = (run_dir / ".hydra" / "hydra.yaml").read_text()
    assert "mode: RUN" in hydra_yaml and "- hydra.mode=RUN" in hydra_yaml and f"output_dir: {run_dir}" in hydra_yaml
    assert json.loads((run_dir / "run.json").read_text())["status"] == "ok"
    for _ in range(2):  # the first stores the composition, the second is served from it
        r, n = _counted_run(cvops, tmp_path, *args, cache=True)
        assert r.returncode == 0, r.stdout + r.stderr
    assert n == {"compose_config": 1, "hydra": 0}, n


def test_a_user_error_in_a_stage_is_one_line(cvops, tmp_path: Path) -> None:
    """A data source that is not there: the stage's own message, exit status 2, no Hydra 'Error executing job'."""
    r = cvops("recipe=quickstart", "data=coco", f"data.path={tmp_path / 'nowhere.json'}", "stages=[curate]")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("cvops: error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Error executing job" not in r.stderr and "Traceback" not in r.stderr


def _printed_command(stderr: str) -> List[str]:
    """The command a ``cvops report`` error prints: ``... run the recipe first (<command>), or ...``."""
    import shlex

    return shlex.split(stderr.split("run the recipe first (", 1)[1].split("), or", 1)[0])


@pytest.mark.parametrize("how", ["python -m", "script off PATH", "script on PATH"])
def test_printed_commands_run_as_printed(how: str, tmp_path: Path) -> None:
    """A command cvops prints to run next works when pasted: the way this process was started (the venv's
    ``cvops`` need not be on PATH), not the bare name ``cvops``."""
    bindir = Path(sys.executable).parent
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and Path(p).resolve() != bindir.resolve())
    if how == "script on PATH":
        path = os.pathsep.join([str(bindir), path])
    env = {**os.environ, "PATH": path}
    start = [sys.executable, "-m", "cvops"] if how == "python -m" else [str(bindir / "cvops")]
    r = subprocess.run([*start, "report", "recipe=quickstart", "--print"], cwd=tmp_path, capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    printed = _printed_command(r.stderr)
    assert printed[-1] == "recipe=quickstart" and (printed[0] == "cvops") == (how == "script on PATH"), printed
    again = subprocess.run([*printed, "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, env=env,
                           timeout=120)
    assert again.returncode == 0 and "project: quickstart" in again.stdout, again.stderr


def test_next_hints_open_files_only_with_an_opener(monkeypatch: pytest.MonkeyPatch) -> None:
    """``{open}`` in a stage's hint is this machine's opener (``xdg-open`` with a display), else nothing: the
    path alone (``open`` is macOS's)."""
    from cvops import summary

    class Monitor:
        next = ("{open}{artifacts[report]}   # the drift report",)

    rows = {"monitor": {"status": "ran", "artifacts": {"report": "/r/report.html"}}}
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    expected = "open /r/report.html" if sys.platform == "darwin" else "/r/report.html"
    assert summary.next_steps(rows, {"monitor": Monitor()}, "")[0].startswith(expected)
