#!/usr/bin/env bash
# Installs what the project needs, and only what is missing:
#   - Debian's dataset-fashion-mnist (the real images of the Fashion-MNIST scenes), when root;
#   - .venv at the repository root: torch 2.14.1 + torchvision 0.29.1 (PyPI), Detectron2 from the
#     PyPI wheel sal-detectron2==0.7.2 (see README "Installation"), fvcore, iopath, matplotlib (for
#     the ablation charts), scipy (their t-tests), pytest, onnx + onnxruntime (for libra_rcnn.export and its tests),
#     and this project in editable mode.
# A complete .venv is reused: a stamp records the hash of this script and setup.py.
set -euo pipefail
cd "$(dirname "$0")/.."

FASHION_MNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FASHION_MNIST" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[bootstrap] installing Debian's dataset-fashion-mnist"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "error: $FASHION_MNIST not found; run: sudo apt-get install -y dataset-fashion-mnist" >&2
    exit 1
  fi
fi

STAMP=.venv/.libra-rcnn-complete
WANT=$(cat scripts/bootstrap.sh setup.py | sha1sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

echo "[bootstrap] creating .venv (torch, Detectron2, the project)"
python3 -m venv .venv
PIP=(.venv/bin/python -m pip -q --disable-pip-version-check)
"${PIP[@]}" install "setuptools<81" wheel
"${PIP[@]}" install torch==2.14.1 torchvision==0.29.1
if ! .venv/bin/python -c "import detectron2" 2>/dev/null; then
  # Detectron2 is on PyPI only as sal-detectron2, a pure-Python wheel tagged cp310: fetch it
  # for 3.10 and install it under a neutral name (its compiled extension is never loaded).
  wheels=$(mktemp -d)
  "${PIP[@]}" download --no-deps --only-binary=:all: --python-version 3.10 -d "$wheels" sal-detectron2==0.7.2
  cp "$wheels"/sal_detectron2-0.7.2-cp310-*.whl "$wheels/sal_detectron2-0.7.2-py3-none-any.whl"
  "${PIP[@]}" install "$wheels/sal_detectron2-0.7.2-py3-none-any.whl"
  rm -rf "$wheels"
fi
# The wheel does not declare fvcore, iopath and OpenCV (its Visualizer imports cv2; OpenCV 4.12+
# needs numpy 2); numpy<2 and setuptools<81 as Detectron2 needs.
# Export (docs/export.md): onnx 1.23.2 and onnxruntime 1.31.1, the newest for Python 3.11, both
# work with numpy 1.26. onnx needs ml-dtypes; ml-dtypes 0.6 requires numpy>=2, 0.5.4 numpy>=1.23.3,
# so ml-dtypes<0.6 keeps the numpy<2 set above unchanged (nothing else moves), instead of moving
# numpy, OpenCV and the mmdetection reference environment to numpy 2 at once.
"${PIP[@]}" install fvcore iopath matplotlib scipy "pycocotools>=2.0.11" "opencv-python-headless<4.12" "numpy<2" "setuptools<81" pytest \
  onnx==1.23.2 onnxruntime==1.31.1 "ml-dtypes<0.6"
"${PIP[@]}" install --no-deps --no-build-isolation -e .
.venv/bin/python -c "import libra_rcnn, detectron2; print('[bootstrap] ready: detectron2', detectron2.__version__)"
echo "$WANT" > "$STAMP"
