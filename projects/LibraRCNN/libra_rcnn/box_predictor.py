"""A Fast R-CNN box predictor whose box regression can use the balanced L1 loss."""
import torch

from detectron2.config import configurable
from detectron2.modeling.roi_heads import FastRCNNOutputLayers

from .balanced_l1 import BOX_REG_LOSS_TYPES, BalancedL1Options
from .config import check_choice

__all__ = ["LibraFastRCNNOutputLayers"]


class LibraFastRCNNOutputLayers(FastRCNNOutputLayers):
    """Detectron2's ``FastRCNNOutputLayers`` with ``"balanced_l1"`` as a box loss type.

    With ``MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE: "balanced_l1"`` the box regression loss
    is :func:`balanced_l1_loss` (METHODS.md §4) of the predicted vs. the GT ``box_delta``s of
    the foreground RoIs, summed and divided by the number of sampled RoIs, as Detectron2
    normalises its smooth L1 loss; ``BBOX_REG_LOSS_WEIGHT`` still scales it. Every other
    loss type (``smooth_l1``, ``giou``, ...) is Detectron2's own, unchanged.

    Extra config keys: ``MODEL.LIBRA.BALANCED_L1.{ALPHA, GAMMA, BETA, VARIANT}``.

    Raises:
        ValueError: at build time, for an unknown loss type or a balanced L1 parameter out of
            range, naming the key.
    """

    @configurable
    def __init__(self, input_shape, *, balanced_l1: BalancedL1Options = BalancedL1Options(), **kwargs):
        super().__init__(input_shape, **kwargs)
        check_choice("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", self.box_reg_loss_type, BOX_REG_LOSS_TYPES)
        self.balanced_l1 = balanced_l1

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["balanced_l1"] = BalancedL1Options.from_config(cfg)
        return ret

    def box_reg_loss(self, proposal_boxes, gt_boxes, pred_deltas, gt_classes):
        """Box regression loss over the R sampled RoIs of a batch.

        Args:
            proposal_boxes, gt_boxes: float (R, 4), XYXY_ABS pixels.
            pred_deltas: float (R, 4) (class-agnostic) or (R, num_classes * 4).
            gt_classes: int64 (R,), class in [0, num_classes), background or -1.

        Returns:
            Scalar tensor: the loss summed over foreground RoIs and divided by max(R, 1).
        """
        if self.box_reg_loss_type != "balanced_l1":
            return super().box_reg_loss(proposal_boxes, gt_boxes, pred_deltas, gt_classes)
        box_dim = proposal_boxes.shape[1]
        foreground = (gt_classes >= 0) & (gt_classes < self.num_classes)
        if pred_deltas.shape[1] != box_dim:
            # Pick each RoI's deltas of its GT class; background RoIs are masked out below.
            cls = gt_classes.clamp(0, self.num_classes - 1)
            rows = torch.arange(pred_deltas.shape[0], device=pred_deltas.device)
            pred_deltas = pred_deltas.view(-1, self.num_classes, box_dim)[rows, cls]
        gt_deltas = self.box2box_transform.get_deltas(proposal_boxes, gt_boxes)
        loss = self.balanced_l1(pred_deltas, gt_deltas)
        # A mask, not an index: no host-device synchronisation.
        loss = torch.where(foreground[:, None], loss, torch.zeros_like(loss)).sum()
        return loss / max(gt_classes.numel(), 1.0)
