"""The monitor's reference profile (cached per export in ``<store>/reference/``) must not outlive the code that
computed it: an edit to any cvops module its statistics go through (the mask decoding, the media types, ...),
not only the three files it names, gives it a new cache key."""

from __future__ import annotations

import shutil

from cvops import runner
from cvops.drift import profile


def test_an_edit_to_a_module_the_profile_imports_moves_its_cache_key(tmp_path, monkeypatch):
    copy = tmp_path / "cvops"
    shutil.copytree(runner.PKG_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(runner, "PKG_DIR", copy)
    monkeypatch.setattr(profile, "__file__", str(copy / "drift" / "profile.py"))
    runner.clear_code_caches()
    try:
        base = profile._code_hash()
        assert profile._code_hash() == base
        for rel in ("masks.py", "media.py", "drift/stats.py", "detector/runtime.py"):
            f = copy / rel
            original = f.read_bytes()
            f.write_bytes(original + b"\n# edited\n")
            runner.clear_code_caches()
            assert profile._code_hash() != base, rel
            f.write_bytes(original)
        runner.clear_code_caches()
        (copy / "report.py").write_bytes((copy / "report.py").read_bytes() + b"\n# edited\n")  # not imported
        assert profile._code_hash() == base
    finally:
        runner.clear_code_caches()
