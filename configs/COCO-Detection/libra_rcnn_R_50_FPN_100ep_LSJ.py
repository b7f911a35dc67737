# Libra R-CNN on Detectron2's new baseline recipe (new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py):
# from scratch, SyncBN, 4conv1fc box head, large-scale jitter 1024x1024, batch 64, 100 epochs,
# lr 0.1, AMP. The model is detection only (no mask head) with the three Libra components.
# Train: python lazy_train_net.py --config-file configs/COCO-Detection/libra_rcnn_R_50_FPN_100ep_LSJ.py --num-gpus 8
from detectron2.model_zoo import get_config

from ..common.libra import libra_rcnn

_recipe = get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")

model = libra_rcnn(_recipe.model)
dataloader = _recipe.dataloader
dataloader.train.mapper.use_instance_mask = False
# The recipe recomputes boxes from the cropped masks; without masks the cropped boxes are clipped.
dataloader.train.mapper.recompute_boxes = False
optimizer = _recipe.optimizer
lr_multiplier = _recipe.lr_multiplier
train = _recipe.train
train.output_dir = "output/coco/lazy/libra_rcnn_R_50_FPN_100ep_LSJ"
