"""RetinaNet whose box regression can use the balanced L1 loss (Libra RetinaNet,
docs/methods.md#focal-loss-and-retinanet)."""
from typing import List

import torch
from fvcore.nn import sigmoid_focal_loss_jit

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage

from ..config import check_choice, config_keys
from .balanced_l1 import BOX_REG_LOSS_TYPES, BalancedL1Options

__all__ = ["LibraRetinaNet"]


@META_ARCH_REGISTRY.register()
class LibraRetinaNet(RetinaNet):
    """Detectron2's ``RetinaNet`` with ``"balanced_l1"`` as a box loss type.

    With ``MODEL.RETINANET.BBOX_REG_LOSS_TYPE: "balanced_l1"`` the box loss is
    :func:`balanced_l1_loss` of the positive anchors' predicted vs. GT ``box_delta``s, summed and
    divided by the same moving average of the number of positive anchors as the focal loss
    (parameters ``MODEL.LIBRA.RETINANET.BALANCED_L1``: beta 0.11 by default, as published).
    Every other loss type, the focal loss, anchors, matching and inference are Detectron2's.
    Combined with ``build_bfp_backbone`` around ``build_retinanet_resnet_fpn_backbone``
    (refine level 1 of P3–P7) this is Libra RetinaNet.

    Select with ``MODEL.META_ARCHITECTURE: "LibraRetinaNet"``.

    Raises:
        ArgumentError: at build time, for an unknown loss type or a balanced L1 parameter out of
            range, naming the argument (the key when built from a config).
    """

    @config_keys(box_reg_loss_type="MODEL.RETINANET.BBOX_REG_LOSS_TYPE")
    @configurable
    def __init__(self, *, balanced_l1: BalancedL1Options = BalancedL1Options(beta=0.11), **kwargs):
        super().__init__(**kwargs)
        check_choice("box_reg_loss_type", self.box_reg_loss_type, BOX_REG_LOSS_TYPES)
        self.balanced_l1 = balanced_l1

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["balanced_l1"] = BalancedL1Options.from_config(cfg.MODEL.LIBRA.RETINANET.BALANCED_L1,
                                                           "MODEL.LIBRA.RETINANET.BALANCED_L1")  # fmt: skip
        return ret

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[torch.Tensor],
        gt_labels: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        gt_boxes: List[torch.Tensor],
    ):
        """Focal loss and box loss, each normalised by the EMA of the positive anchors.

        As Detectron2's ``RetinaNet.losses``, but over every anchor with the valid (focal) and
        positive (box) anchors as weights instead of boolean-mask indexing: the same values,
        and a single host-device synchronisation (the positives' count for the normaliser,
        as Detectron2's) instead of seven.

        Args:
            anchors: per level, ``Boxes`` of the (Hi * Wi * A) anchors, XYXY_ABS pixels.
            pred_logits: per level, (N, Hi * Wi * A, K) class logits.
            gt_labels: per image, int64 (R,): class, ``num_classes`` for background, -1 ignored.
            pred_anchor_deltas: per level, (N, Hi * Wi * A, 4).
            gt_boxes: per image, (R, 4) matched GT boxes, XYXY_ABS pixels.

        Returns:
            dict with ``loss_cls`` and ``loss_box_reg`` (scalar tensors).
        """
        if self.box_reg_loss_type != "balanced_l1":
            return super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        labels = torch.stack(gt_labels)  # (N, R)
        valid = labels >= 0
        positive = valid & (labels != self.num_classes)
        num_positive = positive.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_positive / len(gt_labels))
        normalizer = self._ema_update("loss_normalizer", max(num_positive, 1), 100)

        logits = cat(pred_logits, dim=1)  # (N, R, K)
        # One-hot targets by comparison: background (num_classes) and ignored (-1) rows are 0.
        classes = torch.arange(self.num_classes, device=labels.device)
        targets = (labels[..., None] == classes).to(logits.dtype)
        loss_cls = sigmoid_focal_loss_jit(
            logits, targets, alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma, reduction="none"
        )
        loss_cls = (loss_cls * valid[..., None].to(loss_cls.dtype)).sum()

        all_anchors = Boxes.cat(anchors).tensor  # (R, 4)
        gt_deltas = torch.stack([self.box2box_transform.get_deltas(all_anchors, b) for b in gt_boxes])
        deltas = cat(pred_anchor_deltas, dim=1)
        loss_box_reg = self.balanced_l1(deltas, gt_deltas, "sum", weight=positive[..., None])
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}
