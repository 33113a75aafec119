"""Bad command lines and bad recipes: exit 2, one message naming key/file/fix, nothing written."""

from __future__ import annotations

import pytest


def _fails(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    err = result.stderr
    assert err.startswith("cvops: error:"), err
    assert "Traceback" not in err, err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"
    return err


def _recipe(cvops, name, text):
    d = cvops.workdir / "my_recipes"
    d.mkdir(exist_ok=True)
    (d / f"{name}.yaml").write_text(text)
    cvops.env["CVOPS_RECIPE_PATH"] = str(d)


def test_typo_on_command_line_suggests_the_key(cvops):
    err = _fails(cvops("recipe=quickstart", "train.max_epoch=3"), "'train.max_epoch'", "command line", "'train.max_epochs'")
    assert not (cvops.workdir / "outputs").exists()


def test_typo_in_recipe_names_file_and_line(cvops):
    _recipe(cvops, "mine", "# @package _global_\nproject: mine\ntrain:\n  lr: 0.1\n  max_epoch: 3\n")
    _fails(cvops("recipe=mine"), "'train.max_epoch'", "mine.yaml, line 5", "'train.max_epochs'")


def test_unknown_top_level_key(cvops):
    _fails(cvops("recipe=quickstart", "+projet=x"), "'projet'", "'project'")


def test_wrong_type_on_command_line(cvops):
    _fails(cvops("recipe=quickstart", "train.max_epochs=abc"), "train.max_epochs", "abc", "int")


def test_wrong_type_in_one_sweep_value(cvops):
    _fails(cvops("-m", "recipe=quickstart", "train.lr=0.01,fast"), "train.lr", "fast")
    assert not (cvops.workdir / "outputs").exists()


def test_missing_required_value(cvops):
    _fails(cvops("project=parts", "data=voc"), "data.path", "data.path=")


def test_unknown_recipe_lists_available(cvops):
    _fails(cvops("recipe=quikstart"), "unknown recipe 'quikstart'", "quickstart", "bccd")


def test_unknown_group_option_lists_choices(cvops):
    _fails(cvops("recipe=quickstart", "model=yolo_tiny"), "yolo_tiny", "rtmdet_tiny", "model=yolox_tiny")


def test_recipe_that_does_not_parse_names_file_and_line(cvops):
    _recipe(cvops, "broken", "# @package _global_\nproject: b\ntrain:\n  lr: [0.1\n  seed: 2\n")
    _fails(cvops("recipe=broken"), "broken.yaml, line 5", "does not parse")


def test_recipe_without_global_package(cvops):
    _recipe(cvops, "nopkg", "project: nopkg\n")
    _fails(cvops("recipe=nopkg"), "@package _global_")


def test_a_searchpath_without_the_recipe_folders_says_so(cvops):
    """hydra.searchpath=[...] replaces cvops' list, recipes:// included: say that, not 'no @package line'."""
    err = _fails(cvops("recipe=quickstart", f"hydra.searchpath=[file://{cvops.workdir}]"),
                 "replaces cvops' own search path", "recipes://")
    assert "@package" not in err


def test_unknown_stage(cvops):
    _fails(cvops("recipe=quickstart", "stages=[curate,trian]"), "trian", "train")


@pytest.mark.parametrize("where", ["cli", "recipe"])
def test_disallowed_target_is_refused(cvops, where):
    if where == "cli":
        r = cvops("recipe=quickstart", "tracker._target_=os.system")
    else:
        _recipe(cvops, "evil", "# @package _global_\nproject: evil\ntracker:\n  _target_: os.system\n")
        r = cvops("recipe=evil")
    _fails(r, "os.system", "not allowed", "tracker._target_")
    assert not (cvops.workdir / "outputs").exists()


def test_unwritable_store(cvops):
    blocker = cvops.workdir / "file"
    blocker.write_text("not a directory")
    r = cvops("recipe=quickstart", f"paths.store={blocker}/store")
    _fails(r, "not writable", "paths.store")
    assert not blocker.is_dir()


def test_upstream_missing_says_what_to_run(cvops):
    r = cvops("recipe=quickstart", "stages=[train]", test_stages=True)
    _fails(r, "needs the 'curate' (fingerprint", "stages=[curate,train]")
    assert cvops.calls() == []


@pytest.mark.parametrize("line, needles", [
    (["task=instance_segmentation", "curate.masks=true"],  # a boxes-only model for masks: the mask models named
     ["task=instance_segmentation needs a model that predicts masks", "model=rtmdet_tiny", "model=rtmdet_ins_tiny",
      "command line: task=instance_segmentation"]),
    (["model=rtmdet_ins_tiny", "task=detection", "curate.masks=true"],  # a mask model for boxes
     ["model=rtmdet_ins_tiny is an instance segmentation model", "task=instance_segmentation"]),
    (["model=rtmdet_ins_tiny"],  # the task follows the model; masks asked for, boxes curated
     ["curate.masks=false keeps boxes only", "curate.masks=true"]),
    (["task=segmentation"], ["task", "segmentation", "instance_segmentation"]),  # not a choice
])
def test_task_must_agree_with_the_model_and_the_curated_labels(cvops, line, needles):
    _fails(cvops("recipe=quickstart", *line), *needles)
    assert not (cvops.workdir / "outputs").exists()


@pytest.mark.parametrize("line,needles", [
    (["train.nnodes=0"], ["train.nnodes=0", "at least 1", "command line: train.nnodes=0"]),
    (["train.nnodes=2"], ["train.nnodes=2", "train.launcher=pytorch"]),
    (["train.nnodes=2", "train.launcher=pytorch", "train.node_rank=2"], ["train.node_rank=2", "0..1"]),
    (["train.master_port=70000"], ["train.master_port=70000", "1..65535"]),
])
def test_multi_node_training_keys_are_checked_before_any_work(cvops, line, needles):
    _fails(cvops("recipe=quickstart", *line), *needles)
    assert not (cvops.workdir / "outputs").exists()


def test_task_and_model_masks_agree_in_the_shipped_recipes():
    from cvops.config import compose_config, mask_models, preflight

    assert mask_models() == ["mask_rcnn_r50", "rtmdet_ins_tiny"]
    for recipe in ("quickstart", "quickstart_seg", "bccd"):
        preflight([f"recipe={recipe}"])  # passes
    preflight(["recipe=quickstart", "model=rtmdet_ins_tiny", "data.synthetic.masks=true", "curate.masks=true"])
    assert compose_config(["recipe=quickstart_seg"]).task == "instance_segmentation"
