"""Libra R-CNN's components on Detectron2's LazyConfig models (model_zoo ``common/models``).

Each function edits a model config in place and returns it:

- :func:`libra_rcnn`: a ``GeneralizedRCNN`` FPN config (``common/models/mask_rcnn_fpn.py``)
  becomes Libra R-CNN (docs/methods.md), detection only: the FPN wrapped in a
  ``BalancedFeaturePyramid`` (non-local refinement at P4), ``LibraROIHeads`` with the
  IoU-balanced ``BalancedRoISampler``, and ``LibraFastRCNNOutputLayers`` with the balanced L1 loss.
- :func:`libra_retinanet`: a ``RetinaNet`` config (``common/models/retinanet.py``) becomes
  Libra RetinaNet (docs/methods.md#focal-loss-and-retinanet): BFP at P4 of P3-P7 and the balanced
  L1 loss with beta 0.11.

Every value is the same as in the YAML configs (``configs/Base-Libra-RCNN-FPN.yaml``,
``configs/COCO-Detection/libra_retinanet_R_50_FPN_1x.yaml``); the keys are the components'
constructor arguments, so any of them can be overridden, e.g.
``model.roi_heads.sampler.num_bins=5`` or ``model.backbone.refine_type=conv``.
"""
from detectron2.config import LazyCall as L

from libra_rcnn import (
    BalancedFeaturePyramid,
    BalancedL1Options,
    BalancedRoISampler,
    LibraFastRCNNOutputLayers,
    LibraRetinaNet,
    LibraROIHeads,
    LibraRPN,
)


def libra_rcnn(model):
    """Turn a ``GeneralizedRCNN`` FPN model config into Libra R-CNN (box head only)."""
    model.backbone = L(BalancedFeaturePyramid)(fpn=model.backbone, refine_level=2, refine_type="non_local")
    heads = model.roi_heads
    heads._target_ = LibraROIHeads
    heads.mask_in_features = None
    heads.mask_pooler = None
    heads.mask_head = None
    heads.sampler = L(BalancedRoISampler)(
        batch_size_per_image="${..batch_size_per_image}",
        positive_fraction="${..positive_fraction}",
        pos="instance_balanced",
        neg="iou_balanced",
        num_bins=3,
        binning="paper",
        floor_thr=-1.0,
        floor_fraction=0.0,
        # Upper end of the background IoU interval: the matcher's threshold (labels [0, 1]).
        bg_iou_thresh="${..proposal_matcher.thresholds[0]}",
    )
    heads.box_predictor._target_ = LibraFastRCNNOutputLayers
    heads.box_predictor.box_reg_loss_type = "balanced_l1"
    heads.box_predictor.balanced_l1 = L(BalancedL1Options)(alpha=0.5, gamma=1.5, beta=1.0, variant="paper")
    model.proposal_generator._target_ = LibraRPN
    model.proposal_generator.neg_pos_ub = 5.0
    return model


def libra_retinanet(model):
    """Turn a ``RetinaNet`` model config into Libra RetinaNet."""
    model._target_ = LibraRetinaNet
    model.backbone = L(BalancedFeaturePyramid)(fpn=model.backbone, refine_level=1, refine_type="non_local")
    model.box_reg_loss_type = "balanced_l1"
    model.balanced_l1 = L(BalancedL1Options)(alpha=0.5, gamma=1.5, beta=0.11, variant="paper")
    return model
