# Libra RetinaNet R-50-FPN 1x as a LazyConfig (the same model and schedule as libra_retinanet_R_50_FPN_1x.yaml):
# Detectron2's model zoo retinanet_R_50_FPN_1x.py + ../common/libra.py.
# Train: python lazy_train_net.py --config-file configs/COCO-Detection/libra_retinanet_R_50_FPN_1x.py
from detectron2.model_zoo import get_config

from ..common.libra import libra_retinanet

model = libra_retinanet(get_config("common/models/retinanet.py").model)
model.backbone.fpn.bottom_up.freeze_at = 2

dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.mapper.use_instance_mask = False
dataloader.train.mapper.augmentations[0].short_edge_length = (800,)

optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.01
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x
train = get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "output/coco/lazy/libra_retinanet_R_50_FPN_1x"
