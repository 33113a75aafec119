"""The Python API (``cvops.run``, ``cvops.load``) goes the command line's way and answers as the server does.

- ``cvops.run`` of a one-stage recipe records what ``cvops`` records for the same config (fingerprints,
  metrics, artifacts, overrides); the command line then finds the stage ``cached``, built by the API.
- ``cvops.load(...).predict`` gives the detections ``/v1/predict`` answers for the same bytes, from the
  export artifact of the config (or the one a registry alias points at).
- a value that would reach code is refused through the API as on the command line, before anything is
  written.

Real components throughout: Hydra, the runner, the store, FiftyOne (curate), ONNX Runtime and the FastAPI
application; the model is a tiny graph with the export contract (``helpers/tiny_model.make_contract_onnx``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
import pytest

import cvops
from cvops.errors import ConfigError, UpstreamMissing, UserError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers.images import encode, pil_bytes, scene  # noqa: E402

#: the data half of tests/test_train.py's TINY (curate reads nothing else): 24 synthetic images, no video
TINY_DATA = ["data.synthetic.num_images=24", "data.synthetic.videos=0", "data.synthetic.empty_fraction=0"]
NO_TRACKER = "tracker=none"


def test_import_cvops_stays_light_and_names_the_api():
    heavy = ("hydra", "omegaconf", "torch", "fiftyone", "onnxruntime", "numpy", "cvops.api")
    code = f"import sys, cvops; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"import cvops imported {out.strip()}"
    from cvops import api

    assert cvops.run is api.run and cvops.load is api.load and cvops.Run is api.Run
    assert {"run", "load"} <= set(dir(cvops))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cvops.nope  # noqa: B018


def test_the_command_line_of_a_call():
    from cvops.api import command_line

    assert command_line("quickstart", ["a.b=1"], ["curate", "train"]) == ["recipe=quickstart", "a.b=1",
                                                                          "stages=[curate,train]"]
    assert command_line(None, [], "curate") == ["stages=[curate]"]
    with pytest.raises(TypeError, match="list of 'key=value' strings"):
        command_line("quickstart", "train.lr=0.1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="recipe is given twice"):
        command_line("quickstart", ["recipe=bccd"])
    with pytest.raises(ConfigError, match="stages are given twice"):
        command_line("quickstart", ["stages=[train]"], ["curate"])
    with pytest.raises(ConfigError, match=r"\['curate,train'\] is not a stage name"):
        command_line("quickstart", [], ["curate,train"])


# ------------------------------------------------------------------------------------------------ run
def test_run_records_what_the_command_line_records_and_shares_its_cache(cvops, monkeypatch, capsys):
    from cvops import api  # `cvops` here is the command line (the fixture)

    monkeypatch.chdir(cvops.workdir)
    for k in ("CVOPS_STORE", "WANDB_MODE"):
        monkeypatch.setenv(k, cvops.env[k])
    overrides = ["project=apitest", *TINY_DATA, NO_TRACKER]
    root = logging.getLogger()
    before = (root.level, list(root.handlers))

    run = api.run("quickstart", overrides=overrides, stages=["curate"])
    assert (root.level, root.handlers) == before  # cvops.log's handler was the run's only
    assert run.status == "ok" and list(run.stages) == ["curate"]
    curate = run.stages["curate"]
    assert curate.status == "ran" and curate.metrics["images_in"] == 24
    assert curate.artifacts["dir"] == cvops.store / "curate" / curate.fingerprint
    # the command line's run dir: hydra.run.dir under the working directory, with what `cvops` leaves there
    assert run.run_dir.parent.parent == cvops.workdir / "outputs" / "apitest"
    for f in ("run.json", "report.html", "cvops.log", ".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert (run.run_dir / f).is_file(), f
    assert run.report == run.run_dir / "report.html"
    assert run.manifest == json.loads((run.run_dir / "run.json").read_text())
    log = (run.run_dir / "cvops.log").read_text()
    assert "[cvops][INFO]   curate    running  fp " + curate.fingerprint in log
    assert "run report" in log  # cvops.detail's lines too, as on the command line
    assert "cvops ·" not in capsys.readouterr().out  # no closing summary unless asked

    r = cvops("recipe=quickstart", *overrides, "stages=[curate]")
    assert r.returncode == 0, r.stderr
    api_json, cli_json = cvops.run_jsons()
    assert api_json == run.manifest
    cli = cli_json["stages"]["curate"]
    assert cli["status"] == "cached" and "built" in cli["reason"]  # from the store: the API built it
    for key in ("fingerprint", "metrics", "artifacts"):
        assert cli[key] == api_json["stages"]["curate"][key], key
    for key in ("recipe", "project", "config_hash", "overrides", "status"):
        assert cli_json[key] == api_json[key], key
    assert api_json["overrides"] == ["recipe=quickstart", *overrides, "stages=[curate]"]

    again = api.run("quickstart", overrides=overrides, stages=["curate"], run_dir=cvops.workdir / "mine")
    assert again.run_dir == cvops.workdir / "mine" and again.stages["curate"].status == "cached"
    assert again.stages["curate"].fingerprint == curate.fingerprint


def test_run_names_the_stages_to_run_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UpstreamMissing, match=r"stages=\[curate,train\]"):
        cvops.run("quickstart", overrides=["project=apitest", f"paths.store={tmp_path / 'store'}", *TINY_DATA,
                                          NO_TRACKER],
                  stages=["train"])
    run_json = next((tmp_path / "outputs").glob("apitest/*/*/run.json"))
    assert json.loads(run_json.read_text())["status"] == "failed"  # as the command line records it


# ----------------------------------------------------------------------------------------------- load
def _commit_export(store, fingerprint: str, model: Path, project: str = "apitest"):
    """An export artifact (``model.onnx`` and its manifest) put into the store as the export stage would."""
    import shutil

    with store.build("export", fingerprint) as b:
        shutil.copyfile(model, b.dir / "model.onnx")
        return b.commit({"stage": "export", "fingerprint": fingerprint, "config": {"project": project},
                         "inputs": {}, "artifacts": {"onnx": "model.onnx"}, "metrics": {"gate": "pass"}})


@pytest.fixture
def exported(tmp_path):
    """A store holding the export artifact of ``recipe=quickstart project=apitest`` (its real fingerprint)."""
    from helpers.tiny_model import make_contract_onnx

    from cvops.api import command_line
    from cvops.session import open_recipe

    overrides = ["project=apitest", f"paths.store={tmp_path / 'store'}"]
    recipe = open_recipe(command_line("quickstart", overrides))
    model = make_contract_onnx(tmp_path / "model" / "model.onnx")
    return overrides, recipe, model


def test_load_predicts_what_the_server_answers(exported, tmp_path):
    from fastapi.testclient import TestClient
    from helpers.apps import app_args
    from helpers.tiny_model import CLASSES
    from PIL import Image

    from cvops.detector.runtime import OnnxDetector
    from cvops.serve.app import create_app

    overrides, recipe, model_file = exported
    with pytest.raises(UpstreamMissing, match=r"no export artifact .* stages=\[curate,train,export\]"):
        cvops.load("quickstart", overrides=overrides)
    fp = recipe.fingerprint("export")
    art = _commit_export(recipe.store, fp, model_file)

    model = cvops.load("quickstart", overrides=overrides)
    assert model.classes == list(CLASSES)
    assert model.info["fingerprint"] == fp and model.info["project"] == "apitest" and model.info["recipe"] == "quickstart"
    assert model.max_pixels == recipe.view("serve").serve.max_pixels

    img = scene(50, 90, seed=3)
    png = encode(img, ".png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the server (and predict) turn it upright before detecting
    jpeg = pil_bytes(Image.fromarray(scene(40, 70, seed=4)[..., ::-1]), "JPEG", exif=exif.tobytes(), quality=90)
    (tmp_path / "x.png").write_bytes(png)
    with TestClient(create_app(OnnxDetector(art.path("onnx")), **app_args({"fingerprint": fp}))) as client:
        for data, mime in ((png, "image/png"), (jpeg, "image/jpeg")):
            r = client.post("/v1/predict", content=data, headers={"Content-Type": mime})
            assert r.status_code == 200, r.text
            served = r.json()["detections"]
            assert served and model.predict(data) == served, mime
            assert model.predict(data, masks="none") == served  # a box model ignores masks
        assert r.json()["width"] == 40  # the JPEG was turned upright: 70x40 stored, 40x70 seen
    assert model.predict(tmp_path / "x.png") == model.predict(str(tmp_path / "x.png")) == model.predict(png)
    assert model.predict(img) == model.predict(png)  # a BGR array: the same pixels, lossless

    with pytest.raises(UserError, match="not a JPEG or PNG"):
        model.predict(b"GIF89a....")
    with pytest.raises(ValueError, match=r"\(height, width, 3\) BGR uint8"):
        model.predict(img.astype("float32"))
    with pytest.raises(ValueError, match="masks='rles': one of rle, polygon, none"):
        model.predict(png, masks="rles")
    small = cvops.load("quickstart", overrides=[*overrides, "serve.max_pixels=1000"])  # the same export
    assert small.info["fingerprint"] == fp
    with pytest.raises(UserError, match=r"serve\.max_pixels"):
        small.predict(png)


def test_load_follows_a_registry_alias(exported):
    from cvops.store.registry import Registry

    overrides, recipe, model_file = exported
    with pytest.raises(UserError, match=r"alias 'production' of project apitest is not set .* promote .*"
                                        r"--alias production"):
        cvops.load("quickstart", overrides=overrides, alias="production")
    other = "0123456789abcdef"  # not this config's export: the alias decides
    Registry(recipe.store, "apitest").promote("production", _commit_export(recipe.store, other, model_file))
    model = cvops.load("quickstart", overrides=overrides, alias="production")
    assert model.info["fingerprint"] == other and model.info["alias"] == "production"
    assert cvops.load("quickstart", overrides=[*overrides, "serve.alias=production"]).info["fingerprint"] == other
    with pytest.raises(UserError, match="not a valid name"):
        cvops.load("quickstart", overrides=overrides, alias="../x")


# ------------------------------------------------------------------------------- refused like the CLI
#: a recipe whose Hydra callback would create the canary folder when the job starts
EVIL = "# @package _global_\nproject: evil\nhydra:\n  callbacks:\n    x:\n      _target_: os.makedirs\n      name: {canary}\n"


@pytest.mark.parametrize("call", ["run", "run-override", "load"])
def test_a_refused_target_is_refused_through_the_api_and_nothing_is_written(call, tmp_path, monkeypatch):
    canary, store = tmp_path / "pwned", tmp_path / "store"
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "evil.yaml").write_text(EVIL.format(canary=canary))
    monkeypatch.setenv("CVOPS_RECIPE_PATH", str(tmp_path / "recipes"))
    monkeypatch.chdir(tmp_path)
    line = [f"paths.store={store}", *TINY_DATA]
    with pytest.raises(ConfigError) as e:
        if call == "run":
            cvops.run("evil", overrides=line, stages=["curate"])
        elif call == "run-override":  # a prefix of the allow-list that resolves to os.makedirs
            cvops.run("quickstart", overrides=[*line, "tracker._target_=cvops.track.os.makedirs"], stages=["curate"])
        else:
            cvops.load("evil", overrides=line)
    assert ("tracker._target_" if call == "run-override" else "hydra.callbacks.x._target_") in str(e.value)
    assert not canary.exists() and not store.exists()
    assert sorted(os.listdir(tmp_path)) == ["recipes"]  # no run dir, no store, nothing
