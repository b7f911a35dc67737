# Libra R-CNN R-50-FPN 1x as a LazyConfig (the same model and schedule as libra_rcnn_R_50_FPN_1x.yaml):
# Detectron2's model zoo common configs (model, COCO data, SGD, 1x schedule) + ../common/libra.py.
# Train: python lazy_train_net.py --config-file configs/COCO-Detection/libra_rcnn_R_50_FPN_1x.py
from detectron2.model_zoo import get_config

from ..common.libra import libra_rcnn

model = libra_rcnn(get_config("common/models/mask_rcnn_fpn.py").model)
model.backbone.fpn.bottom_up.freeze_at = 2

dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.mapper.use_instance_mask = False
# The paper trains at 1333x800, single scale (MIN_SIZE_TRAIN: (800,) in the YAML config).
dataloader.train.mapper.augmentations[0].short_edge_length = (800,)

optimizer = get_config("common/optim.py").SGD  # lr 0.02, batch 16
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x
train = get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "output/coco/lazy/libra_rcnn_R_50_FPN_1x"
