#!/usr/bin/env bash
# Wheelhouse for a GPU machine without internet access.
#
# What it does: on a machine that can reach PyPI, it puts into one folder (default: .whl at the
# repository root) every wheel the project needs on top of a stock PyTorch install, built or
# downloaded for the target interpreter (CPython 3.12 on x86_64 Linux by default):
#   - Detectron2: PyPI's sal-detectron2 0.7.2 (Detectron2's main branch as of 2024). It is pure
#     Python but tagged cp310, so it is fetched for 3.10 and saved as a py3-none-any wheel (its
#     compiled extension is never loaded; see README "Installation");
#   - the pure-Python dependencies Detectron2 and its configs use: fvcore, iopath, yacs, omegaconf,
#     hydra-core, antlr4-python3-runtime, portalocker, termcolor, tabulate, cloudpickle (built
#     with `pip wheel`, since some are published as source only);
#   - pycocotools, compiled, as a manylinux binary for the target interpreter.
# Under 10 MB in all. The folder gets a .gitignore of its own, so its wheels stay out of commits.
# torch, torchvision, numpy, matplotlib, OpenCV, pyyaml, pillow, tqdm and tensorboard are not
# included: the GPU machine is expected to have them.
#
# Usage, here (with network):
#   bash benchmarks/gpu/wheelhouse.sh [DIR]
# Environment: PYTHON (the interpreter whose pip runs; default python3, else .venv/bin/python),
# TARGET_PYTHON (the GPU machine's Python version, default 3.12).
#
# DIR is taken relative to the current directory; without it, .whl at the repository root.
#
# Then, on the machine without internet: bring the folder along as .whl at the root of the
# repository's copy there, and either run `bash benchmarks/gpu/run.sh` (it installs .whl/*.whl
# itself, docs/gpu.md) or install the wheels by hand from the repository root, with no index:
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD/projects/LibraRCNN:$PWD
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)

case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  -*) echo "benchmarks/gpu/wheelhouse.sh: error: unknown option $1 (usage: wheelhouse.sh [DIR])" >&2; exit 2 ;;
esac
DIR=${1:-$REPO/.whl}
TARGET_PYTHON=${TARGET_PYTHON:-3.12}
if [ -z "${PYTHON:-}" ]; then
  if python3 -m pip --version >/dev/null 2>&1; then PYTHON=python3; else PYTHON=$REPO/.venv/bin/python; fi
fi
PIP=("$PYTHON" -m pip -q --disable-pip-version-check)

mkdir -p "$DIR"
printf '*\n' > "$DIR/.gitignore"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

echo "[wheelhouse] Detectron2 (sal-detectron2 0.7.2, saved as py3-none-any)"
"${PIP[@]}" download --no-deps --only-binary=:all: --python-version 3.10 -d "$scratch" sal-detectron2==0.7.2
detectron2_wheel=("$scratch"/sal_detectron2-0.7.2-cp310-*.whl)
[ -f "${detectron2_wheel[0]}" ] || { echo "[wheelhouse] error: no sal-detectron2 wheel downloaded" >&2; exit 1; }
cp "${detectron2_wheel[0]}" "$DIR/sal_detectron2-0.7.2-py3-none-any.whl"

echo "[wheelhouse] pure-Python dependencies"
PURE=(fvcore==0.1.5.post20221221 iopath==0.1.10 yacs==0.1.8 omegaconf==2.3.0 hydra-core==1.3.2
      antlr4-python3-runtime==4.9.3 portalocker termcolor tabulate cloudpickle)
"${PIP[@]}" wheel --no-deps -w "$DIR" "${PURE[@]}"

echo "[wheelhouse] pycocotools for CPython $TARGET_PYTHON, manylinux x86_64"
"${PIP[@]}" download --no-deps --only-binary=:all: --implementation cp --python-version "$TARGET_PYTHON" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DIR" pycocotools==2.0.11

# Every package must have arrived as a wheel (a source archive would need a build on the GPU machine).
missing=()
for name in sal_detectron2 fvcore iopath yacs omegaconf hydra_core antlr4_python3_runtime portalocker \
            termcolor tabulate cloudpickle pycocotools; do
  compgen -G "$DIR/${name}-*.whl" >/dev/null || missing+=("$name")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[wheelhouse] error: no wheel for ${missing[*]} in $DIR" >&2
  exit 1
fi
ls "$DIR"
du -sh "$DIR"
