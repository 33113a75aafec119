"""``cvops doctor``: what is installed and whether it works.

Each check runs the component for real (:mod:`cvops.doctor`). Exit status 1 when a required component is
broken; optional ones (CUDA, TensorRT) only report.
"""

from __future__ import annotations

import argparse
import platform
from typing import List


def main(argv: List[str]) -> int:
    """``cvops doctor``; returns the exit status."""
    ap = argparse.ArgumentParser(prog="cvops doctor", description="What is installed and whether it works.")
    ap.parse_args(argv)
    from cvops.doctor import run_checks

    print(f"cvops doctor · Python {platform.python_version()} · {platform.platform()}")
    broken = 0
    for name, required, ok, detail in run_checks():
        mark = "ok  " if ok else ("FAIL" if required else "--  ")
        broken += (not ok) and required
        print(f"  [{mark}] {name:20s} {detail}", flush=True)
    if broken:
        print(f"{broken} required component(s) broken; rerun ./install.sh or see README 'Troubleshooting'")
    return 1 if broken else 0
