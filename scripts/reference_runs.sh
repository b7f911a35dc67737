#!/usr/bin/env bash
# The reference runs of docs/reference_training.md: mmdetection 3.3 on FashionScenes (CPU), each
# resumable (run again, finished runs are skipped and killed ones resume from their checkpoint).
#   Faster R-CNN and Libra R-CNN at seeds 7, 8, 9; RetinaNet and Libra RetinaNet at seed 7.
# Needs: make setup, bash benchmarks/setup_reference_env.sh, python -m libra_rcnn.data --out datasets/fashion_scenes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-docs/results/reference}
run() {  # config seed
  "$PY" -m benchmarks.reference.train "benchmarks/reference/configs/$1.py" --out "$OUT/$1/seed_$2" --seed "$2"
}
for seed in 7 8 9; do
  run libra_rcnn_R_18_FPN_GN "$seed"
  run faster_rcnn_R_18_FPN_GN "$seed"
done
run retinanet_R_18_FPN_GN 7
run libra_retinanet_R_18_FPN_GN 7
