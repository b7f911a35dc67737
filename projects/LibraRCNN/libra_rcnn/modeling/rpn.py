"""Detectron2's RPN with the reference implementation's bound on negative anchors per positive.

mmdetection's own Libra R-CNN config (configs/libra_rcnn/libra-faster-rcnn_r50_fpn_1x_coco.py)
samples the RPN's anchors with ``RandomSampler(num=256, pos_fraction=0.5, neg_pos_ub=5)``: at
most 5 negatives for each positive drawn (at least one), and its RPN losses are averaged over
the anchors drawn. The paper does not mention it (docs/methods.md#the-authors-rpn-sampling, which
links what it was measured to add).
"""
from typing import List

import torch
from detectron2.config import configurable
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.modeling.sampling import subsample_labels

from ..config import check_range, config_keys

__all__ = ["LibraRPN"]


@PROPOSAL_GENERATOR_REGISTRY.register()
class LibraRPN(RPN):
    """Detectron2's ``RPN`` that draws at most ``neg_pos_ub`` negative anchors per positive.

    Per image, Detectron2's ``subsample_labels`` draws up to ``BATCH_SIZE_PER_IMAGE *
    POSITIVE_FRACTION`` positives and negatives for the rest; with ``neg_pos_ub >= 0`` the
    negatives are then cut to ``neg_pos_ub * max(1, #positives)`` (a uniform subset: the drawn
    negatives come in random order), and the RPN losses are divided by the number of anchors
    drawn in the batch instead of ``BATCH_SIZE_PER_IMAGE * #images``, as mmdetection does. With
    ``neg_pos_ub < 0`` it is Detectron2's RPN unchanged.

    Select with ``MODEL.PROPOSAL_GENERATOR.NAME: "LibraRPN"`` and set
    ``MODEL.LIBRA.RPN.NEG_POS_UB`` (5 in the reference's Libra config; -1, off, by default).

    Raises:
        ArgumentError: for a bound that is neither -1 nor >= 0, naming ``neg_pos_ub`` (the key
            when built from a config).
    """

    @config_keys(neg_pos_ub="MODEL.LIBRA.RPN.NEG_POS_UB")
    @configurable
    def __init__(self, *, neg_pos_ub: float = -1.0, **kwargs):
        super().__init__(**kwargs)
        if neg_pos_ub != -1:
            check_range("neg_pos_ub", neg_pos_ub, 0)
        self.neg_pos_ub = float(neg_pos_ub)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["neg_pos_ub"] = cfg.MODEL.LIBRA.RPN.NEG_POS_UB
        return ret

    def _subsample_labels(self, label: torch.Tensor) -> torch.Tensor:
        """Detectron2's draw, then at most ``neg_pos_ub`` negatives per positive; ``label``
        (int (R,): 1, 0 or -1) is overwritten in place and returned."""
        if self.neg_pos_ub < 0:
            return super()._subsample_labels(label)
        pos_idx, neg_idx = subsample_labels(label, self.batch_size_per_image, self.positive_fraction, 0)
        neg_idx = neg_idx[: int(self.neg_pos_ub * max(1, pos_idx.numel()))]
        label.fill_(-1)
        label.scatter_(0, pos_idx, 1)
        label.scatter_(0, neg_idx, 0)
        return label

    def losses(self, anchors, pred_objectness_logits, gt_labels: List[torch.Tensor], pred_anchor_deltas, gt_boxes):
        """Detectron2's RPN losses; with the bound, averaged over the anchors drawn."""
        losses = super().losses(anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        if self.neg_pos_ub < 0:
            return losses
        drawn = (torch.stack(gt_labels) >= 0).sum().clamp(min=1)  # a tensor: no host-device sync
        scale = (self.batch_size_per_image * len(gt_labels)) / drawn
        return {k: v * scale for k, v in losses.items()}
