#!/usr/bin/env bash
# Both Table 2 families on Fashion-MNIST scenes over seeds 7, 8 and 9 (issue "Table 2 as the
# paper ran it"): the smooth L1 family (the paper's baseline losses) with every row, and the L1
# family (Detectron2's default) with its baseline and Libra R-CNN rows. About 18 runs of 10 min
# on a 2-core CPU. Resumable: run it again and finished (config, seed) runs are not trained
# again; a stopped run resumes from its last checkpoint. Seeds are added one at a time, so a
# stopped script leaves whole tables for its first seeds.
#   bash scripts/table2_seeds.sh [OUT]   (default docs/results/runs; its small files are committed)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/results/runs}
A=configs/FashionScenes/ablation
for seeds in "7" "7 8" "7 8 9"; do
  .venv/bin/python -m libra_rcnn.ablation --out "$OUT" --table table2_smooth_l1 --seeds $seeds --configs \
    $A/table2_smooth_l1_a_baseline.yaml $A/table2_smooth_l1_b_iou_sampling.yaml \
    $A/table2_smooth_l1_c_iou_sampling_bfp.yaml $A/table2_smooth_l1_d_balanced_l1.yaml
  .venv/bin/python -m libra_rcnn.ablation --out "$OUT" --table table2_l1 --seeds $seeds --configs \
    $A/table2_l1_a_baseline.yaml $A/table2_l1_d_balanced_l1.yaml
done
