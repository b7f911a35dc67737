#!/usr/bin/env python
"""Train and evaluate libra-rcnn LazyConfigs (Python configs), as Detectron2's tools/lazyconfig_train_net.py.

    python lazy_train_net.py --config-file configs/COCO-Detection/libra_rcnn_R_50_FPN_1x.py
    python lazy_train_net.py --config-file CONFIG --eval-only train.init_checkpoint=model_final.pth
    python lazy_train_net.py --config-file CONFIG --num-gpus 8 --resume train.max_iter=1000

See libra_rcnn/engine/lazy.py.
"""
from libra_rcnn.engine.lazy import cli

if __name__ == "__main__":
    cli("lazy_train_net.py")
