# The LazyConfig equivalent of libra_rcnn_tool_export.yaml: Libra R-CNN (the COCO 1x LazyConfig)
# trained on a COCO export of your own, declared in `coco_instances` (docs/own_data.md).
# Relative paths are resolved against this file's folder. Train:
#   python lazy_train_net.py --config-file configs/OwnData/libra_rcnn_tool_export.py
import os

from detectron2.config import LazyConfig

_libra = LazyConfig.load(os.path.join(os.path.dirname(__file__), "../COCO-Detection/libra_rcnn_R_50_FPN_1x.py"))
model, dataloader, optimizer, lr_multiplier, train = (
    _libra[k] for k in ("model", "dataloader", "optimizer", "lr_multiplier", "train")
)

# name: (annotation file, image folder) of each dataset, registered when the config is loaded.
coco_instances = dict(
    tool_export_train=("../../datasets/tool_export/annotations/train.json", "../../datasets/tool_export/images"),
    tool_export_val=("../../datasets/tool_export/annotations/val.json", "../../datasets/tool_export/images"),
)
dataloader.train.dataset.names = "tool_export_train"
dataloader.test.dataset.names = "tool_export_val"
model.roi_heads.num_classes = 3
train.output_dir = "output/own_data/lazy/libra_rcnn_tool_export"
