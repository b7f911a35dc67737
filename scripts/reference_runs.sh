#!/usr/bin/env bash
# The runs of docs/reports/reference_training.md, on the CPU, each resumable (run again: finished runs are
# skipped, killed ones resume from their checkpoint). mmdetection 3.3 on FashionScenes: Faster R-CNN
# and Libra R-CNN at seeds 7, 8, 9, RetinaNet and Libra RetinaNet at seed 7, and Libra R-CNN without
# its RPN bound; then the Detectron2 runs they are compared with. About 4 hours on 2 cores.
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
# One difference at a time, for the Libra R-CNN gap (docs/reports/reference_training.md): mmdetection's
# Libra R-CNN without the RPN's neg_pos_ub=5 of its own config.
for seed in 7 8 9; do
  run libra_rcnn_R_18_FPN_GN_rpn_neg_pos_ub_off "$seed"
done
# The matching Detectron2 runs that docs/results/runs did not hold (the ablation runner; resumable):
# ours with and without the reference's RPN bound (the difference above), then the RetinaNet family
# on this machine, then ours with mmdetection's IoU binning (both without the RPN bound).
"$PY" -m libra_rcnn.ablation --out docs/results/runs --table libra_rpn_neg_pos_ub --seeds 7 8 9 --configs \
  configs/FashionScenes/ablation/table2_l1_d_balanced_l1.yaml configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml
"$PY" -m libra_rcnn.ablation --out docs/results/runs --table retinanet_family --seeds 7 --configs \
  configs/FashionScenes/retinanet_R_18_FPN_GN.yaml configs/FashionScenes/libra_retinanet_R_18_FPN_GN.yaml
"$PY" -m libra_rcnn.ablation --out docs/results/runs --table libra_binning --seeds 7 8 9 --configs \
  configs/FashionScenes/ablation/table2_l1_d_balanced_l1.yaml configs/FashionScenes/ablation/sampler_binning_mmdet.yaml
