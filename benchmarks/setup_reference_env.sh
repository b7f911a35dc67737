#!/usr/bin/env bash
# Installs the reference implementation (mmdetection 3.3.0) into .venv-bench/site-packages
# (git-ignored), never into .venv: for the benchmark's samplers and for the tests against
# mmdetection's own code (tests/test_mmdet_parity.py; .ci/run runs this script first).
#
# The benchmark runs them with the project's interpreter (.venv/bin/python: the same torch,
# numpy 1.26, OpenCV, setuptools<81 for mmengine's pkg_resources) and this folder first on
# PYTHONPATH. Wheels only, no dependency resolution (--no-deps), every version pinned:
# mmcv-lite is PyPI's wheel of mmcv 2.1.0 without the compiled ops, which the samplers never
# call (benchmarks/reference_sampler.py registers a stand-in for mmcv._ext; the parity tests
# select torchvision's RoIAlign kernel in mmcv's RoIAlign).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  echo "error: $PY not found; run 'make setup' first" >&2
  exit 1
fi
TARGET=.venv-bench/site-packages
# A complete install is reused: a stamp records the hash of this script.
STAMP=.venv-bench/.complete
WANT=$(sha1sum < "$0" | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -d "$TARGET/mmdet" ]; then
  exit 0
fi
rm -rf "$TARGET" "$STAMP"
mkdir -p "$TARGET"
"$PY" -m pip install -q --disable-pip-version-check --no-deps --only-binary=:all: --target "$TARGET" \
  mmdet==3.3.0 mmengine==0.10.7 mmcv-lite==2.1.0 \
  addict==2.4.0 yapf==0.43.0 terminaltables==3.1.10 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 \
  shapely==2.2.0 scipy==1.17.1 six==1.17.0
PYTHONPATH="$TARGET:." "$PY" -c "
from benchmarks.reference_sampler import load_samplers
import mmdet
load_samplers()
print('[setup_reference_env] mmdet', mmdet.__version__, 'samplers import from $TARGET')"
echo "$WANT" > "$STAMP"
