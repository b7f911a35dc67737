#!/usr/bin/env bash
# The main job: install what is missing, build the Fashion-MNIST scenes, train Libra R-CNN on
# the CPU, evaluate it (COCO AP table), and draw its predictions next to the checkpoint.
# Usage: bash scripts/demo.sh [CONFIG] [KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
CONFIG=${1:-configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml}
shift || true
PY=.venv/bin/python

bash scripts/bootstrap.sh
# Where Detectron2's datasets live ($DETECTRON2_DATASETS, ./datasets by default): the configs'
# fashion_scenes_* datasets are registered from there.
SCENES=${DETECTRON2_DATASETS:-datasets}/fashion_scenes
if [ ! -f "$SCENES/annotations/instances_val.json" ]; then
  "$PY" -m libra_rcnn.data --out "$SCENES"
fi
"$PY" train_net.py --config-file "$CONFIG" --resume "$@"
"$PY" -m libra_rcnn.tools.visualize --config-file "$CONFIG" "$@"
echo "[demo] done in $(( $(date +%s) - start )) s"
