#!/usr/bin/env python
"""Train and evaluate libra-rcnn models with Detectron2's DefaultTrainer.

    python train_net.py --config-file configs/COCO-Detection/libra_rcnn_R_50_FPN_1x.yaml
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model_final.pth
    python train_net.py --config-file CONFIG --num-gpus 8 --resume SOLVER.IMS_PER_BATCH 16

Flags are Detectron2's (``default_argument_parser``); see libra_rcnn/engine/cli.py.
"""
from libra_rcnn.engine import cli

if __name__ == "__main__":
    cli("train_net.py")
