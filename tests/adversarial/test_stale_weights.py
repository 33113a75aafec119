"""The cache must never serve a model trained from other weights or configs than the recipe names now.

A recipe names weights and configs by path or URL. These tests replace what is behind the name (a local
``load_from`` checkpoint, a local ``init_cfg`` checkpoint in ``cfg_options``, a trusted model config and
its ``_base_``), give two URLs that end in the same file name, and take the pretrained weights away (an
offline machine), and check that train's fingerprint, and everything downstream, moves; and that what
training uses is exactly what the fingerprint covered.
"""

from __future__ import annotations

import os
import shutil

import pytest

from cvops.config import compose_config
from cvops.detector.checkpoint import cached_path
from cvops.fingerprint import fingerprints

TINY = "mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py"


def _fps(tmp_path, *overrides):
    cfg = compose_config(["recipe=quickstart", f"paths.store={tmp_path / 'store'}", *overrides])
    return {k: v["fingerprint"] for k, v in fingerprints(cfg).items()}


def _moved(before, after):
    return sorted(k for k in before if before[k] != after[k])


def _train_and_after(fps):
    return sorted(k for k in fps if k != "curate")


def _checkpoint(path, value):
    import torch

    torch.save({"state_dict": {"w": torch.full((2,), float(value))}}, path)


def test_a_checkpoint_replaced_under_the_same_path_retrains(tmp_path):
    ckpt = tmp_path / "weights.pth"
    _checkpoint(ckpt, 1)
    for option in (f"model.load_from={ckpt}", f"+model.cfg_options.model.backbone.init_cfg.checkpoint={ckpt}"):
        base = _fps(tmp_path, option)
        assert _fps(tmp_path, option) == base  # untouched: cached
        st = os.stat(ckpt)
        _checkpoint(ckpt, 2)  # same size; the time moves
        assert _moved(base, _fps(tmp_path, option)) == _train_and_after(base)
        os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))  # small files count by content, time put back or not
        assert _moved(base, _fps(tmp_path, option)) == _train_and_after(base)
        _checkpoint(ckpt, 1)


def test_an_edited_trusted_config_or_its_base_retrains(tmp_path, monkeypatch):
    import mmdet

    src = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", "rtmdet")
    mine = tmp_path / "configs"
    mine.mkdir()
    shutil.copy(os.path.join(src, "rtmdet_tiny_8xb32-300e_coco.py"), mine / "tiny.py")
    (mine / "base.py").write_text("_base_ = 'mmdet::rtmdet/rtmdet_s_8xb32-300e_coco.py'\n")
    text = (mine / "tiny.py").read_text().replace("'./rtmdet_s_8xb32-300e_coco.py'", "'./base.py'")
    (mine / "tiny.py").write_text(text)
    monkeypatch.setenv("CVOPS_TRUSTED_CONFIGS", str(mine))
    option = f"model.mmdet_config={mine / 'tiny.py'}"
    base = _fps(tmp_path, option)
    assert _fps(tmp_path, option) == base
    (mine / "base.py").write_text((mine / "base.py").read_text() + "model = dict(bbox_head=dict(exp_on_reg=True))\n")
    after_base = _fps(tmp_path, option)
    assert _moved(base, after_base) == _train_and_after(base)
    (mine / "unrelated.py").write_text("x = 1\n")  # a file the config does not read: nothing moves
    assert _fps(tmp_path, option) == after_base


def test_two_urls_with_one_file_name_are_two_downloads():
    a, b = "https://example.org/runA/best.pth", "https://example.org/runB/best.pth"
    assert cached_path(a) != cached_path(b) and cached_path(a).name.endswith("-best.pth")
    assert cached_path(a + "?sig=1") != cached_path(a + "?sig=2")  # presigned URLs of one key too
    assert cached_path(a) == cached_path(a)


def test_unavailable_pretrained_weights_train_from_scratch_under_their_own_fingerprint(tmp_path, monkeypatch):
    """Offline, the base config's backbone weights cannot be downloaded: that model is cached under its own
    fingerprint, and a machine that has the weights does not get it from the cache (and trains with them)."""
    from cvops.train import inputs, mmconfig

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(inputs, "_UNAVAILABLE", {})
    calls = []

    def offline(url, **kw):
        calls.append(url)
        raise ValueError(f"cannot download {url}: URLError: offline")

    monkeypatch.setattr("cvops.detector.checkpoint.download", offline)
    pretrained = ["model.pretrained=true", f"model.mmdet_config={TINY}"]
    offline_fps = _fps(tmp_path, *pretrained)
    assert len(calls) == 1 and _fps(tmp_path, *pretrained) == offline_fps and len(calls) == 1  # one try per process
    url = calls[0]
    model = {"backbone": {"init_cfg": {"type": "Pretrained", "checkpoint": url}}}
    _, notes = mmconfig._pretrained(model, None, pretrained=True)
    assert model["backbone"]["init_cfg"] is None and "unavailable" in notes[0]  # from scratch, said

    cached_path(url).parent.mkdir(parents=True)
    _checkpoint(cached_path(url), 3)  # the weights arrive (downloaded on a machine that is online)
    online_fps = _fps(tmp_path, *pretrained)
    assert _moved(offline_fps, online_fps) == _train_and_after(online_fps)
    model = {"backbone": {"init_cfg": {"type": "Pretrained", "checkpoint": url}}}
    _, notes = mmconfig._pretrained(model, None, pretrained=True)
    assert notes == [] and model["backbone"]["init_cfg"]["checkpoint"] == str(cached_path(url))
    assert _fps(tmp_path, "model.pretrained=false", f"model.mmdet_config={TINY}")["train"] not in (
        offline_fps["train"], online_fps["train"])


def test_a_folder_or_missing_path_as_load_from_is_never_walked(tmp_path, monkeypatch):
    """``model.load_from=/`` (or ``~``, or a folder of checkpoints) must not make every run stat the whole tree
    to fingerprint train: it is stamped as not a file, and training refuses it naming the key."""
    import os as _os

    from cvops.train import mmconfig

    walked = []
    real_walk = _os.walk
    monkeypatch.setattr(_os, "walk", lambda *a, **k: walked.append(a) or real_walk(*a, **k))
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for value in ("/", str(folder), str(tmp_path / "missing.pth")):
        fps = _fps(tmp_path, f"model.load_from={value}")
        assert fps["train"] != _fps(tmp_path)["train"]
    assert walked == []
    with pytest.raises(mmconfig.TrainConfigError, match=r"model.load_from=.*ckpts is not a checkpoint file; give a checkpoint"):
        mmconfig._pretrained({}, str(folder))
