"""A recipe is data: every route from a recipe, a recipe directory or an override to code is refused.

Each attack names a canary directory that the code it tries to run would
create (``os.makedirs``, ``mkdir``); it must not exist afterwards, and the
refusal must name the key. Most routes are checked through ``preflight`` (what
``cvops`` runs before Hydra starts); a few through the real ``cvops`` command,
and the training-time checks through the real mmengine config builder.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvops.config import ConfigError, preflight  # noqa: E402

HEADER = "# @package _global_\nproject: evil\n"


def _recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, name: str = "evil") -> Path:
    d = tmp_path / "recipes"
    d.mkdir(exist_ok=True)
    (d / f"{name}.yaml").write_text(HEADER + body)
    monkeypatch.setenv("CVOPS_RECIPE_PATH", str(d))
    return d


def _canary(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


# (what, recipe body with {canary}, the key the refusal names)
RECIPE_ROUTES = [
    ("hydra callback", "hydra:\n  callbacks:\n    x:\n      _target_: os.makedirs\n      name: {canary}\n",
     "hydra.callbacks.x._target_"),
    ("hydra callback via an allowed package's attribute",
     "hydra:\n  callbacks:\n    x:\n      _target_: cvops.sweep.os.makedirs\n      name: {canary}\n",
     "hydra.callbacks.x._target_"),
    ("logging factory", "hydra:\n  job_logging:\n    handlers:\n      x:\n        '()': os.makedirs\n"
                        "        name: {canary}\n", "hydra.job_logging.handlers.x.()"),
    ("logging class", "hydra:\n  job_logging:\n    handlers:\n      x:\n        class: os.makedirs\n",
     "hydra.job_logging.handlers.x.class"),
    ("logging ext://", "hydra:\n  hydra_logging:\n    handlers:\n      x:\n        class: logging.StreamHandler\n"
                       "        stream: ext://os.system\n", "hydra.hydra_logging.handlers.x.stream"),
    ("launcher", "hydra:\n  launcher:\n    _target_: os.makedirs\n", "hydra.launcher._target_"),
    ("launcher setup lines", "defaults:\n  - override /hydra/launcher: submitit_slurm\n"
                             "hydra:\n  launcher:\n    setup: ['mkdir {canary}']\n", "hydra.launcher.setup"),
    ("sweeper search space", "defaults:\n  - override /hydra/sweeper: optuna\n"
                             "hydra:\n  sweeper:\n    custom_search_space: os.makedirs\n",
     "hydra.sweeper.custom_search_space"),
    ("sweep params reaching hydra", "hydra:\n  sweeper:\n    params:\n      hydra.callbacks.x._target_: os.makedirs\n",
     "hydra.sweeper.params"),
    ("env_set LD_PRELOAD", "hydra:\n  job:\n    env_set:\n      LD_PRELOAD: /tmp/evil.so\n",
     "hydra.job.env_set.LD_PRELOAD"),
    ("tracker target", "tracker:\n  _target_: os.makedirs\n", "tracker._target_"),
    ("string-prefix allow-list", "tracker:\n  _target_: cvops.track.os.makedirs\n", "tracker._target_"),
    ("target in a free-form mapping", "data:\n  class_map: {{}}\n  sources:\n    - format: coco\n"
                                      "      _target_: os.makedirs\n", "data.sources[0]._target_"),
    ("mmengine dotted type", "model:\n  cfg_options:\n    custom_hooks:\n      - type: os.makedirs\n"
                             "        name: {canary}\n", "model.cfg_options.custom_hooks[0].type"),
    ("mmengine scoped import path", "model:\n  cfg_options:\n    custom_hooks:\n      - type: mmdet.os.makedirs\n",
     "model.cfg_options.custom_hooks[0].type"),
    ("mmengine custom_imports", "model:\n  cfg_options:\n    custom_imports:\n      imports: [os]\n",
     "model.cfg_options.custom_imports"),
    ("mmengine scope import", "model:\n  cfg_options:\n    model:\n      _scope_: evil\n",
     "model.cfg_options.model._scope_"),
    ("config.py key injection", "model:\n  cfg_options:\n    \"x': __import__('os').makedirs('{canary}'), 'y\": 1\n",
     "model.cfg_options"),
    ("mmengine http checkpoint", "model:\n  cfg_options:\n    model:\n      backbone:\n        init_cfg:\n"
                                 "          type: Pretrained\n          checkpoint: http://example.com/x.pth\n",
     "model.cfg_options.model.backbone.init_cfg.checkpoint"),
    ("mmdet config outside mmdet", "model:\n  mmdet_config: {evil_py}\n", "model.mmdet_config"),
    ("mmdet config climbing out", "model:\n  mmdet_config: mmdet::../../../../../../../{evil_py}\n",
     "model.mmdet_config"),
    ("http load_from", "model:\n  load_from: http://example.com/x.pth\n", "model.load_from"),
]


@pytest.mark.parametrize("what,body,key", RECIPE_ROUTES, ids=[r[0] for r in RECIPE_ROUTES])
def test_recipe_route_is_refused(tmp_path, monkeypatch, what, body, key):
    evil_py = tmp_path / "evil.py"
    evil_py.write_text(f"import os\nos.makedirs({str(_canary(tmp_path))!r})\n")
    _recipe(tmp_path, monkeypatch, body.format(canary=_canary(tmp_path), evil_py=evil_py))
    with pytest.raises(ConfigError) as e:
        preflight(["recipe=evil"])
    msg = str(e.value)
    assert key in msg and "not allowed" in msg, msg
    assert "evil.yaml, line" in msg or "composed config" in msg, msg
    assert not _canary(tmp_path).exists()


OVERRIDE_ROUTES = [
    ("+hydra.callbacks.x._target_=os.makedirs", "hydra.callbacks.x._target_"),
    ("hydra.job_logging.handlers.console.class=os.makedirs", "hydra.job_logging.handlers.console.class"),
    ("tracker._target_=torch.os.system", "tracker._target_"),
    ("+hydra.job.env_set.PYTHONPATH=/tmp", "hydra.job.env_set.PYTHONPATH"),
    ("model.mmdet_config=/etc/passwd.py", "model.mmdet_config"),
]


@pytest.mark.parametrize("override,key", OVERRIDE_ROUTES, ids=[o for o, _ in OVERRIDE_ROUTES])
def test_override_route_is_refused(override, key):
    with pytest.raises(ConfigError) as e:
        preflight(["recipe=quickstart", override])
    assert key in str(e.value) and "command line" in str(e.value), str(e.value)


def test_a_sweep_value_is_checked_too():
    with pytest.raises(ConfigError, match="tracker._target_"):
        preflight(["recipe=quickstart", "tracker._target_=cvops.track.NullTracker,os.system"])


@pytest.mark.parametrize("overrides", [
    ["recipe=quickstart"],
    ["recipe=quickstart", "hydra/launcher=local_parallel"],
    ["recipe=quickstart", "hydra/launcher=slurm"],
    ["recipe=quickstart", "tracker=none"],
    ["recipe=quickstart", "+model.cfg_options.custom_hooks=[{type: EMAHook}]",
     "+model.cfg_options.model.bbox_head.loss_cls.type=mmdet.QualityFocalLoss"],
    ["recipe=quickstart", "+hydra.job.env_set.OMP_NUM_THREADS=1"],
])
def test_what_cvops_ships_still_passes(overrides):
    preflight(overrides)


def test_a_config_file_is_allowed_only_from_a_trusted_folder_in_the_environment(tmp_path, monkeypatch):
    cfg = tmp_path / "mine" / "my_rtmdet.py"
    cfg.parent.mkdir()
    cfg.write_text("_base_ = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'\n")
    with pytest.raises(ConfigError, match="CVOPS_TRUSTED_CONFIGS"):
        preflight(["recipe=quickstart", f"model.mmdet_config={cfg}"])
    monkeypatch.setenv("CVOPS_TRUSTED_CONFIGS", str(cfg.parent))
    preflight(["recipe=quickstart", f"model.mmdet_config={cfg}"])
    link = tmp_path / "mine" / "sneaky.py"  # a link inside the trusted folder to a file outside it
    outside = tmp_path / "outside.py"
    outside.write_text("x = 1\n")
    link.symlink_to(outside)
    with pytest.raises(ConfigError, match="CVOPS_TRUSTED_CONFIGS"):
        preflight(["recipe=quickstart", f"model.mmdet_config={link}"])


# ---------------------------------------------------------------- real runs
def _fails(result):
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert result.stderr.startswith("cvops: error:") and "Traceback" not in result.stderr, result.stderr
    return result.stderr


@pytest.mark.parametrize("body", [RECIPE_ROUTES[0][1], RECIPE_ROUTES[2][1], RECIPE_ROUTES[13][1]],
                         ids=["callback", "logging", "mmengine-type"])
def test_cvops_refuses_before_anything_runs(cvops, body):
    canary = cvops.workdir / "pwned"
    d = cvops.workdir / "recipes"
    d.mkdir()
    (d / "evil.yaml").write_text(HEADER + "defaults:\n  - override /data: synthetic\n" + body.format(canary=canary))
    cvops.env["CVOPS_RECIPE_PATH"] = str(d)
    for args in (["recipe=evil"], ["recipe=evil", "--cfg", "job"], ["recipe=evil", "--info"], ["-m", "recipe=evil"]):
        err = _fails(cvops(*args))
        assert "not allowed" in err
        assert not canary.exists()
    assert not (cvops.workdir / "outputs").exists()


def test_cvops_refuses_other_primary_configs(cvops, tmp_path):
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "config.yaml").write_text("hydra:\n  callbacks:\n    x:\n      _target_: os.getcwd\n")
    err = _fails(cvops("--config-dir", str(tmp_path / "cfgs"), "recipe=quickstart"))
    assert "--config-dir" in err
    import pickle

    class Evil:
        def __reduce__(self):
            import os

            return (os.makedirs, (str(tmp_path / "pwned"),))

    (tmp_path / "config.pickle").write_bytes(pickle.dumps(Evil()))
    err = _fails(cvops("--experimental-rerun", str(tmp_path / "config.pickle")))
    assert "unpickles" in err and not (tmp_path / "pwned").exists()


# ---------------------------------------------------- at training time
def test_training_config_builder_checks_registry_names(tmp_path):
    """The values a job really got (a sweep can set them) are checked where mmengine would import them."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from helpers.tiny_model import make_checkpoint  # noqa: F401  (same setup path as the real models)

    from cvops.config import compose_config
    from cvops.train import mmconfig

    cfg = compose_config(["project=t", "model=rtmdet_tiny", "train=cpu_smoke"])
    exports = {}
    for s in ("train", "val", "test"):
        p = tmp_path / f"{s}.json"
        p.write_text('{"images": [{"id": 1, "file_name": "x.jpg", "width": 8, "height": 8}], "annotations": [], '
                     '"categories": [{"id": 1, "name": "a"}]}')
        exports[s] = p
    model, train = OmegaConf.to_object(cfg.model), OmegaConf.to_object(cfg.train)
    for bad in ({"custom_hooks": [{"type": "os.makedirs", "name": str(tmp_path / "pwned")}]},
                {"custom_hooks": [{"type": "NoSuchHookAnywhere"}]},
                {"custom_imports": {"imports": ["os"]}}):
        with pytest.raises(mmconfig.TrainConfigError, match="not allowed"):
            mmconfig.build(dataclasses.replace(model, cfg_options=bad), train, ["a"], exports, tmp_path, [], cuda=False)
    good, _ = mmconfig.build(dataclasses.replace(model, cfg_options={"custom_hooks": [{"type": "EMAHook"}]}), train,
                             ["a"], exports, tmp_path, [], cuda=False)
    assert any(h.get("type") == "EMAHook" for h in good.custom_hooks)
    assert not (tmp_path / "pwned").exists()


def test_remote_checkpoints_are_https_only_and_never_fully_unpickled(tmp_path):
    from cvops.detector.checkpoint import download, load

    with pytest.raises(ValueError, match="https"):
        download("http://example.com/x.pth")
    with pytest.raises(ValueError, match="https"):
        download("file:///etc/passwd")
    evil = tmp_path / "evil.pth"  # a pickle that calls os.makedirs when fully unpickled
    import pickle

    class Evil:
        def __reduce__(self):
            import os

            return (os.makedirs, (str(tmp_path / "pwned"),))

    evil.write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(ValueError, match="not a loadable checkpoint"):
        load(str(evil))
    assert not (tmp_path / "pwned").exists()
