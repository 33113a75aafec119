"""Every stage's own check runs before any work: a bad value of any stage of the recipe, whichever stages the
run asks for, is refused with one line naming the key, exit status 2, and nothing is built (no artifact, no
FiftyOne dataset)."""

from __future__ import annotations

import pytest

from cvops.stages import BUILTIN

#: one value per stage check that only that check can refuse (the schema's types accept each of them)
BAD = {
    "train": ("train.max_epochs=0", "train.max_epochs=0: 1 or more"),
    "export": ("export.gate.max_map_drop=-5", "export.gate.max_map_drop=-5.0: mAP points either way"),
    "serve": ("serve.lanes=-1", "serve.lanes=-1: inference lanes per worker"),
    "monitor": ("monitor.on_drift=no_such_recipe", "monitor.on_drift='no_such_recipe': no such recipe; choose loop or one of"),
}


def test_every_stage_with_values_to_check_declares_a_check():
    assert {s.name for s in BUILTIN if s.check} == set(BAD)


@pytest.mark.parametrize("stage", sorted(BAD))
def test_a_bad_value_is_refused_before_anything_runs(stage, cvops):
    import fiftyone as fo

    override, says = BAD[stage]
    project = f"preflight_{stage}"
    # stages=[curate]: the value belongs to a stage this run does not even run, and is still refused first
    r = cvops("recipe=quickstart", f"project={project}", "stages=[curate]", override)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stderr.startswith(f"cvops: error: {says}") and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not cvops.store.exists()  # no artifact, not even a store folder
    assert not [d for d in fo.list_datasets() if d.startswith(project)]
    assert not list(cvops.workdir.glob("outputs/**/run.json"))


def test_the_defaults_pass_every_check():
    from cvops.config import check_stages, compose_config

    for recipe in ("quickstart", "quickstart_seg", "bccd"):
        check_stages(compose_config([f"recipe={recipe}"]))
