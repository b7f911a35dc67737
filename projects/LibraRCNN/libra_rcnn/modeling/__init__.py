"""The detector's components, each registered in Detectron2's registries on import.

- Balanced feature pyramid (:mod:`.bfp`, with :mod:`.resize` and :mod:`.fpn`): a backbone.
- IoU-balanced sampling (:mod:`.sampling`, :mod:`.random_order`) in :class:`LibraROIHeads`
  (:mod:`.roi_heads`), whose box predictor (:mod:`.box_predictor`) adds the balanced L1 loss
  (:mod:`.balanced_l1`).
- The authors' RPN sampling (:mod:`.rpn`).
- Libra RetinaNet (:mod:`.retinanet`) and FSAF (:mod:`.fsaf`).
- The imbalance statistics the heads log (:mod:`.imbalance`).
"""
from .balanced_l1 import BalancedL1Options, balanced_l1_loss
from .bfp import BalancedFeaturePyramid, NonLocalBlock2d, build_bfp_backbone
from .box_predictor import LibraFastRCNNOutputLayers
from .fpn import LastLevelP6P7NoReLU, build_retinanet_resnet_fpn_p7_no_relu_backbone
from .fsaf import FSAF, FSAFHead, fsaf_targets, giou_loss, iou_loss, select_levels
from .retinanet import LibraRetinaNet
from .roi_heads import LibraROIHeads
from .rpn import LibraRPN
from .sampling import (
    BalancedRoISampler,
    instance_balanced_positives,
    iou_balanced_negatives,
    random_negatives,
    sample_within_groups,
)

__all__ = [
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
    "giou_loss",
    "BalancedRoISampler",
    "sample_within_groups",
    "instance_balanced_positives",
    "iou_balanced_negatives",
    "random_negatives",
]
