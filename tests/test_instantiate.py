"""The allow-listed `_target_` helper."""

from __future__ import annotations

import pytest

from cvops.instantiate import TargetNotAllowed, check_targets, instantiate
from cvops.track import NullTracker


def test_allowed_target_is_built():
    t = instantiate({"_target_": "cvops.track.NullTracker", "project": "p"})
    assert isinstance(t, NullTracker) and t.project == "p"


@pytest.mark.parametrize("target", ["os.system", "subprocess.Popen", "builtins.eval", "cvopsx.evil", "torchx.y"])
def test_disallowed_targets_are_refused_before_import(target):
    with pytest.raises(TargetNotAllowed, match="not allowed"):
        instantiate({"_target_": target, "_args_": ["echo pwned"]})


def test_nested_targets_are_checked():
    node = {"a": {"b": [{"c": {"_target_": "cvops.track.NullTracker"}}, {"_target_": "os.system"}]}}
    with pytest.raises(TargetNotAllowed) as e:
        check_targets(node)
    assert e.value.key == "a.b[1]._target_"
