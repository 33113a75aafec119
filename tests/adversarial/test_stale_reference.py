"""The monitor's reference profile (an artifact of the store, ``<store>/reference/<fingerprint>/``) must not
outlive the code that computed it: an edit to any cvops module its statistics go through (the mask decoding,
the media types, ...), not only the three files it names, gives it a new fingerprint."""

from __future__ import annotations

import shutil

from cvops import fingerprint
from cvops.drift import profile


def test_an_edit_to_a_module_the_profile_imports_moves_its_fingerprint(tmp_path, monkeypatch):
    copy = tmp_path / "cvops"
    shutil.copytree(fingerprint.PKG_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "PKG_DIR", copy)
    monkeypatch.setattr(profile, "__file__", str(copy / "drift" / "profile.py"))
    fingerprint.clear_code_caches()
    try:
        base = profile.reference_fingerprint("e" * 16, 0.3)
        assert profile.reference_fingerprint("e" * 16, 0.3) == base
        assert profile.reference_fingerprint("e" * 16, 0.25) != base  # the statistics depend on low_confidence
        for rel in ("masks.py", "media.py", "drift/stats.py", "detector/runtime.py"):
            f = copy / rel
            original = f.read_bytes()
            f.write_bytes(original + b"\n# edited\n")
            fingerprint.clear_code_caches()
            assert profile.reference_fingerprint("e" * 16, 0.3) != base, rel
            f.write_bytes(original)
        fingerprint.clear_code_caches()
        (copy / "report.py").write_bytes((copy / "report.py").read_bytes() + b"\n# edited\n")  # not imported
        assert profile.reference_fingerprint("e" * 16, 0.3) == base
    finally:
        fingerprint.clear_code_caches()
