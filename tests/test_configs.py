"""Every recipe composes and validates; every group option composes, validates and builds."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cvops.config import compose_config, preflight
from cvops.instantiate import instantiate
from cvops.recipes import CONF_DIR, available_recipes
from cvops.schema import GROUPS, STAGES

# Options that need a value no default can give (a path to the user's data).
NEEDS = {("data", "coco"): ["data.path=x.json"], ("data", "voc"): ["data.path=x"], ("data", "yolo"): ["data.path=x.yaml"],
         ("data", "images"): ["data.path=x"], ("data", "video"): ["data.path=x.mp4"],
         ("data", "sources"): ["data.sources=[{format: images, path: x}]"],
         ("model", "rtmdet_ins_tiny"): ["curate.masks=true"],  # a mask model trains on curated masks
         ("model", "mask_rcnn_r50"): ["curate.masks=true"]}


def options():
    for group in GROUPS:
        for p in sorted((CONF_DIR / group).glob("*.yaml")):
            yield group, p.stem


def test_bundled_recipes_present():
    assert {"quickstart", "bccd"} <= set(available_recipes())


@pytest.mark.parametrize("recipe", available_recipes())
def test_every_recipe_composes_and_validates(recipe):
    preflight([f"recipe={recipe}"])
    cfg = compose_config([f"recipe={recipe}"])
    assert cfg.project == recipe
    assert set(cfg.stages) <= set(STAGES)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("group,option", list(options()))
def test_every_group_option_composes(group, option):
    overrides = ["project=t", f"{group}={option}", *NEEDS.get((group, option), [])]
    preflight(overrides)
    cfg = compose_config(overrides, hydra_node=True)
    assert cfg.hydra.runtime.choices[group] == option


@pytest.mark.parametrize("option", [p.stem for p in sorted((CONF_DIR / "tracker").glob("*.yaml"))])
def test_every_tracker_instantiates(option, tmp_path):
    cfg = compose_config(["project=t", f"tracker={option}"])
    tracker = instantiate(cfg.tracker)
    assert type(tracker).__module__ == "cvops.track"
    assert tracker.project == (None if option == "none" else "t")


@pytest.mark.parametrize("option", [p.stem for p in sorted((CONF_DIR / "model").glob("*.yaml"))])
def test_every_model_names_an_mmdet_config_that_exists(option):
    import mmdet
    from mmengine.config import Config

    cfg = compose_config(["project=t", f"model={option}"])
    scope, _, rel = cfg.model.mmdet_config.partition("::")
    assert scope == "mmdet"
    path = Path(mmdet.__file__).parent / ".mim" / "configs" / rel
    assert path.is_file(), f"{option}: {path} is not shipped with mmdet {mmdet.__version__}"
    mm = Config.fromfile(str(path))
    assert mm.model.type  # parses, names a detector


@pytest.mark.parametrize("option", ["local_parallel", "slurm"])
def test_launcher_presets_compose(option):
    cfg = compose_config(["project=t", f"hydra/launcher={option}"], hydra_node=True)
    target = cfg.hydra.launcher._target_
    assert target.startswith("hydra_plugins."), target
