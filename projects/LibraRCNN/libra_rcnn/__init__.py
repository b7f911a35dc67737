"""libra-rcnn: balanced learning for object detection, as a Detectron2 project.

Importing this package registers every component in Detectron2's registries:

- ``BACKBONE_REGISTRY``: ``build_bfp_backbone`` (balanced feature pyramid around an FPN) and
  ``build_retinanet_resnet_fpn_p7_no_relu_backbone`` (mmdetection's P6/P7, for converted models);
- ``ROI_HEADS_REGISTRY``: ``LibraROIHeads`` (IoU-balanced sampling, balanced L1 box loss);
- ``PROPOSAL_GENERATOR_REGISTRY``: ``LibraRPN`` (the reference's bound on negative anchors);
- ``META_ARCH_REGISTRY``: ``LibraRetinaNet`` (RetinaNet with the balanced L1 box loss) and
  ``FSAF`` (the feature-selective anchor-free module, alone or with RetinaNet's anchors);
- ``DatasetCatalog``: ``fashion_scenes_train`` and ``fashion_scenes_val``.

Add the project's config keys with :func:`add_libra_config`.
"""
from .balanced_l1 import BalancedL1Options, balanced_l1_loss
from .bfp import BalancedFeaturePyramid, NonLocalBlock2d, build_bfp_backbone
from .box_predictor import LibraFastRCNNOutputLayers
from .config import add_libra_config
from .data import FASHION_MNIST_CLASSES, build_fashion_scenes, register_fashion_scenes
from .fpn import LastLevelP6P7NoReLU, build_retinanet_resnet_fpn_p7_no_relu_backbone
from .fsaf import FSAF, FSAFHead, fsaf_targets, iou_loss, select_levels
from .retinanet import LibraRetinaNet
from .roi_heads import LibraROIHeads
from .rpn import LibraRPN
from .sampling import (
    BalancedRoISampler,
    instance_balanced_positives,
    iou_balanced_negatives,
    random_negatives,
    random_positives,
    sample_within_groups,
)

register_fashion_scenes()

__version__ = "0.1.0"

__all__ = [
    "add_libra_config",
    "balanced_l1_loss",
    "BalancedL1Options",
    "BalancedFeaturePyramid",
    "NonLocalBlock2d",
    "build_bfp_backbone",
    "LastLevelP6P7NoReLU",
    "build_retinanet_resnet_fpn_p7_no_relu_backbone",
    "LibraFastRCNNOutputLayers",
    "LibraROIHeads",
    "LibraRPN",
    "LibraRetinaNet",
    "FSAF",
    "FSAFHead",
    "fsaf_targets",
    "select_levels",
    "iou_loss",
    "BalancedRoISampler",
    "sample_within_groups",
    "instance_balanced_positives",
    "random_positives",
    "iou_balanced_negatives",
    "random_negatives",
    "FASHION_MNIST_CLASSES",
    "build_fashion_scenes",
    "register_fashion_scenes",
]
