#!/usr/bin/env bash
# Libra R-CNN's Table 2 on Fashion-MNIST scenes over seeds 7, 8 and 9, in two families:
# - smooth L1 (the paper's baseline box losses): rows a-d add IoU-balanced sampling, the BFP and the
#   balanced L1 loss one at a time, as the paper does; row e adds the RPN sampling of the authors'
#   config (Libra R-CNN as the authors train it); and the baseline with that RPN sampling alone;
# - L1 (Detectron2's default box loss): the baseline and Libra R-CNN rows.
# 24 runs of about 10 minutes each on a 2-core CPU. Resumable: run it again and finished
# (config, seed) runs are not trained again, a stopped run resumes from its last checkpoint. Seeds
# are added one at a time, so a stopped script leaves whole tables for its first seeds.
#   bash scripts/table2_seeds.sh [OUT]   (default output/runs)
# Each run trains into OUT/<config name>/seed_<N>/; the tables (.md, .json, .png) land in OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-output/runs}
A=configs/FashionScenes/ablation
SMOOTH_L1=($A/table2_smooth_l1_a_baseline.yaml $A/table2_smooth_l1_b_iou_sampling.yaml
  $A/table2_smooth_l1_c_iou_sampling_bfp.yaml $A/table2_smooth_l1_d_balanced_l1.yaml $A/table2_smooth_l1_e_rpn_bound.yaml)
RPN_BOUND=($A/table2_smooth_l1_a_baseline.yaml $A/table2_smooth_l1_a_baseline_rpn_bound.yaml
  $A/table2_smooth_l1_d_balanced_l1.yaml $A/table2_smooth_l1_e_rpn_bound.yaml)
L1=($A/table2_l1_a_baseline.yaml $A/table2_l1_d_balanced_l1.yaml)
for seeds in "7" "7 8" "7 8 9"; do
  .venv/bin/python -m libra_rcnn.ablation --out "$OUT" --table table2_smooth_l1 --seeds $seeds --configs "${SMOOTH_L1[@]}"
  .venv/bin/python -m libra_rcnn.ablation --out "$OUT" --table table2_rpn_bound --seeds $seeds --configs "${RPN_BOUND[@]}"
  .venv/bin/python -m libra_rcnn.ablation --out "$OUT" --table table2_l1 --seeds $seeds --configs "${L1[@]}"
done
