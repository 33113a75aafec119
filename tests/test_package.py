"""cvops as a real installed package: the wheel carries conf/ and recipes/, and works from any directory.

The wheel is built from this checkout and installed (not editable) into a
fresh virtual environment that sees the heavy stack (torch, mmdet, FiftyOne)
of the project's environment but not the checkout: the test checks that the
``cvops`` it runs is the installed one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a clean copy: setuptools' build/ in a checkout can hold files deleted since
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "outputs", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "tests"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp / "dist"), str(src)], check=True, capture_output=True, timeout=600)
    wheel = next((tmp / "dist").glob("cvops-*.whl"))
    venv = tmp / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the project environment's packages, appended after the venv's own: its editable cvops hook is a .pth
    # there, which a path added this way does not run, so only the installed wheel provides `cvops`
    (Path(site) / "project-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    return venv


def run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CVOPS_RECIPE_PATH")}
    return subprocess.run([str(venv / "bin" / "cvops"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_wheel_holds_conf_and_recipes_and_runs_from_an_empty_directory(installed, tmp_path):
    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import cvops, cvops.recipes as r; "
                            "print(cvops.__file__); print(r.CONF_DIR); print(r.RECIPES_DIR)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(str(installed)) for p in where), where  # the wheel, not the checkout
    assert Path(where[1], "model", "rtmdet_tiny.yaml").is_file() and Path(where[2], "quickstart.yaml").is_file()

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    spec = run(installed, empty, "recipe=quickstart", "--cfg", "job")
    assert spec.returncode == 0, spec.stderr[-2000:]
    assert "project: quickstart" in spec.stdout and "format: onnx" in spec.stdout
    assert "mmdet_config: mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py" in spec.stdout

    one = run(installed, empty, "recipe=quickstart", "stages=[curate]", f"paths.store={tmp_path / 'store'}",
              "data.synthetic.num_images=12", "data.synthetic.videos=0")
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    manifest = json.loads(next(empty.glob("outputs/quickstart/*/*/run.json")).read_text())
    assert manifest["stages"]["curate"]["status"] == "ran" and manifest["status"] == "ok"
    assert manifest["stages"]["curate"]["metrics"]["images_kept"] > 0
