"""FSAF: the feature-selective anchor-free module on Detectron2's RetinaNet (docs/methods.md#fsaf).

Zhu, He and Savvides, "Feature Selective Anchor-Free Module for Single-Shot Object
Detection", CVPR 2019. Every pyramid level gets an anchor-free branch: a K-channel class
conv on RetinaNet's class tower and a 4-channel distance conv (ReLU) on its box tower. Each GT
instance is trained on one level only, the one where its anchor-free loss is lowest (online
feature selection, §3.3 of the paper). With ``MODEL.LIBRA.FSAF.ANCHOR_BASED`` the anchor-based
RetinaNet branch trains jointly (AB+FSAF) and both branches' detections meet in one NMS.
"""
import math
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss_jit
from torch.nn.utils.rnn import pad_sequence

from detectron2.config import configurable
from detectron2.layers import batched_nms, cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransformLinear
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou

from ..config import check_choice, check_range, config_keys
from .retinanet import LibraRetinaNet

__all__ = ["FSAF", "FSAFHead", "fsaf_targets", "select_levels", "iou_loss", "giou_loss", "FSAF_SELECTIONS",
           "FSAF_BOX_LOSS_TYPES"]

FSAF_SELECTIONS = ("online", "heuristic")
# FSAF's constructor arguments set by MODEL.LIBRA.FSAF.<NAME IN CAPITALS>.
FSAF_ARGUMENTS = ("anchor_based", "effective_scale", "ignore_scale", "norm_scale", "selection", "box_loss_type",
                  "cls_loss_weight", "box_loss_weight")  # fmt: skip
FSAF_BOX_LOSS_TYPES = ("iou", "giou")

# The box branch's bias at the start (the reference implementation's): distances of
# 0.25 x S x stride, a box of S/2 strides around every pixel.
BOX_BIAS_INIT = 0.25
# FPN's level rule for heuristic selection (as Detectron2's RoI pooler): a 224-pixel box on P4.
CANONICAL_BOX_SIZE = 224
CANONICAL_LEVEL = 4


class _Decoding:
    """Detectron2's decoding of a dense detector's outputs before NMS
    (``DenseDetector._decode_multi_level_predictions``: per level, the (location, class) pairs
    scoring above the threshold, at most ``topk_candidates`` of them, boxes decoded from their
    deltas), with a box transform of its own: the anchor-free branch's distances."""

    _decode_multi_level_predictions = DenseDetector._decode_multi_level_predictions
    _decode_per_level_predictions = DenseDetector._decode_per_level_predictions

    def __init__(self, box2box_transform):
        self.box2box_transform = box2box_transform


def fsaf_targets(
    points: torch.Tensor,
    strides: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_valid: torch.Tensor,
    effective_scale: float = 0.2,
    ignore_scale: float = 0.5,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Anchor-free ground truth of every pixel of every level, for a batch (§7; FSAF §3.2).

    A pixel is *positive* for a GT box when its centre lies in the box's effective box (same
    centre, sides ``effective_scale`` x the box's) or in the pixel cell that holds the box's
    centre (so that every instance has a pixel on every level). Where effective regions of
    several boxes meet, the smallest box (area) wins. A pixel that is positive for no box but
    lies in some box's ignoring box (sides ``ignore_scale`` x the box's) is *ignored*; every
    other pixel is *negative*. Computed for all boxes and pixels at once, (B, G, P) masks.

    Args:
        points: float (P, 2), pixel centres (x, y) in pixels, all levels concatenated.
        strides: float (P,), the stride of each pixel's level, in pixels.
        gt_boxes: float (B, G, 4), GT boxes in XYXY_ABS pixels, padded to G per image.
        gt_valid: bool (B, G), False for padding.
        effective_scale: eps_e in (0, 1].
        ignore_scale: eps_i in [eps_e, 1].

    Returns:
        owner: long (B, P), index in ``gt_boxes`` of the box the pixel is positive for; -1
            for ignored and negative pixels.
        ignored: bool (B, P).
    """
    centre = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, G, 2)
    size = (gt_boxes[..., 2:] - gt_boxes[..., :2]).clamp(min=0)  # (B, G, 2)
    offset = (points[None, None] - centre[:, :, None]).abs()  # (B, G, P, 2)
    in_effective = (offset <= size[:, :, None] * (effective_scale / 2)).all(-1)
    in_ignoring = (offset <= size[:, :, None] * (ignore_scale / 2)).all(-1)
    cell = torch.floor(points / strides[:, None])  # (P, 2) integer cell of each pixel
    centre_cell = (torch.floor(centre[:, :, None] / strides[None, None, :, None]) == cell).all(-1)
    effective = (in_effective | centre_cell) & gt_valid[..., None]
    area = size.prod(-1)  # (B, G)
    area_where = torch.where(effective, area[..., None], torch.full_like(area[..., None], math.inf))
    smallest, owner = area_where.min(dim=1)  # (B, P)
    positive = torch.isfinite(smallest)
    owner = torch.where(positive, owner, torch.full_like(owner, -1))
    ignored = (in_ignoring & gt_valid[..., None]).any(dim=1) & ~positive
    return owner, ignored


def select_levels(pixel_loss: torch.Tensor, owner: torch.Tensor, level_ids: torch.Tensor, num_levels: int, num_gt: int):
    """Online feature selection (§7; FSAF §3.3): each instance's level of minimum mean loss.

    The loss of instance g on level l is the mean of ``pixel_loss`` over the pixels of level l
    that ``owner`` gives to g (its effective pixels there). Levels where g has no pixel never
    win. Segment sums by ``scatter_add``: no loop, no host sync.

    Args:
        pixel_loss: float (B, P), per-pixel loss (focal loss summed over classes + IoU loss).
        owner: long (B, P), from :func:`fsaf_targets` (-1: not positive).
        level_ids: long (P,), level index (0 = finest) of each pixel.
        num_levels: L.
        num_gt: G, the padded number of GT boxes per image.

    Returns:
        long (B, G): the selected level index of every instance (0 where it has no pixel).
    """
    batch = owner.shape[0]
    positive = owner >= 0
    image = torch.arange(batch, device=owner.device)[:, None]
    segment = ((image * num_gt + owner.clamp(min=0)) * num_levels + level_ids[None]).flatten()
    sums = pixel_loss.new_zeros(batch * num_gt * num_levels)
    counts = torch.zeros_like(sums)
    sums.scatter_add_(0, segment, (pixel_loss * positive).flatten())
    counts.scatter_add_(0, segment, positive.flatten().to(sums.dtype))
    mean = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, math.inf))
    return mean.view(batch, num_gt, num_levels).argmin(dim=-1)


def iou_loss(pred_boxes: torch.Tensor, target_boxes: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """IoU loss -ln(IoU) of matched box pairs (UnitBox; FSAF §3.2), element-wise.

    Args:
        pred_boxes, target_boxes: float (..., 4), XYXY_ABS pixels; targets of positive area.
        eps: IoU floor inside the logarithm.

    Returns:
        float (...): the loss of every pair (IoU from Detectron2's ``matched_pairwise_iou``).
    """
    shape = pred_boxes.shape[:-1]
    iou = matched_pairwise_iou(Boxes(pred_boxes.reshape(-1, 4)), Boxes(target_boxes.reshape(-1, 4)))
    iou = torch.nan_to_num(iou, nan=0.0)  # two empty boxes: 0 / 0
    return -torch.log(iou.clamp(min=eps)).view(shape)


def giou_loss(pred_boxes: torch.Tensor, target_boxes: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """GIoU loss 1 - GIoU of matched box pairs, element-wise, without host-device syncs.

    Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019, Algorithm 2 (the
    loss of two axis-aligned boxes; GIoU itself is Algorithm 1): with C the smallest box that
    encloses boxes A and B, GIoU = IoU - |C minus (A u B)| / |C| and the loss 1 - GIoU, in [0, 2].
    The value and gradient are those of torchvision's ``generalized_box_iou_loss`` with
    ``reduction="none"`` (``eps`` added to both denominators), degenerate and disjoint boxes
    included: the intersection counts only where both of its sides are positive (Algorithm 2,
    step 4), chosen by ``torch.where`` instead of a boolean-mask assignment. Only element-wise
    ops, min/max and ``where``: no value is read on the host and no shape depends on the
    values, so a GPU never waits and tracing or export keeps the batch dimensions symbolic.
    Like torchvision's (and unlike step 1 of Algorithm 2), it does not reorder corners.

    Args:
        pred_boxes, target_boxes: (..., 4) tensors of broadcastable shapes, XYXY_ABS pixels
            (x0, y0, x1, y1). float32 and float64 are kept; other dtypes (float16, bfloat16,
            integers) are computed in float32. Boxes of zero width or height are allowed.
        eps: added to the union and to the enclosing box's area (pixels squared), so that two
            empty boxes give IoU 0 and loss 1 instead of 0 / 0.

    Returns:
        (...) float32 or float64 tensor of the broadcast shape: the loss of every pair.

    Raises:
        ValueError: when the last dimension of either input is not 4.
    """
    if pred_boxes.shape[-1] != 4 or target_boxes.shape[-1] != 4:
        raise ValueError(
            f"giou_loss takes boxes of shape (..., 4), got {tuple(pred_boxes.shape)} and {tuple(target_boxes.shape)}"
        )
    pred, target = (b if b.dtype in (torch.float32, torch.float64) else b.float() for b in (pred_boxes, target_boxes))
    px0, py0, px1, py1 = pred.unbind(-1)
    tx0, ty0, tx1, ty1 = target.unbind(-1)
    # The intersection's sides; no overlap (a side <= 0) is zero area and zero gradient.
    inter_w = torch.minimum(px1, tx1) - torch.maximum(px0, tx0)
    inter_h = torch.minimum(py1, ty1) - torch.maximum(py0, ty0)
    overlap = (inter_w > 0) & (inter_h > 0)
    inter = torch.where(overlap, inter_w * inter_h, torch.zeros_like(inter_w))
    union = (px1 - px0) * (py1 - py0) + (tx1 - tx0) * (ty1 - ty0) - inter
    # The smallest box enclosing both, C.
    enclosing_w = torch.maximum(px1, tx1) - torch.minimum(px0, tx0)
    enclosing = enclosing_w * (torch.maximum(py1, ty1) - torch.minimum(py0, ty0))
    return 1 - (inter / (union + eps) - (enclosing - union) / (enclosing + eps))


class FSAFHead(RetinaNetHead):
    """RetinaNet's head plus FSAF's anchor-free convs on the same towers (FSAF §3.1).

    ``forward(features)`` returns four lists over levels: anchor-based logits (N, A*K, H, W)
    and ``box_delta``s (N, A*4, H, W) (empty lists without the anchor-based branch), anchor-free
    logits (N, K, H, W) and distances (N, 4, H, W), >= 0 (ReLU), in units of S x stride, in
    ``Box2BoxTransformLinear``'s order (left, top, right, bottom).
    """

    @configurable
    def __init__(self, *, anchor_based: bool = True, **kwargs):
        super().__init__(**kwargs)
        channels, num_classes = self.cls_score.in_channels, kwargs["num_classes"]
        self.anchor_based = anchor_based
        self.af_cls_score = nn.Conv2d(channels, num_classes, kernel_size=3, padding=1)
        self.af_box_pred = nn.Conv2d(channels, 4, kernel_size=3, padding=1)
        for layer in (self.af_cls_score, self.af_box_pred):
            nn.init.normal_(layer.weight, std=0.01)
        prior_prob = kwargs.get("prior_prob", 0.01)
        nn.init.constant_(self.af_cls_score.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.constant_(self.af_box_pred.bias, BOX_BIAS_INIT)
        if not anchor_based:  # FSAF alone: no unused parameters (DDP would refuse them)
            del self.cls_score, self.bbox_pred

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["anchor_based"] = cfg.MODEL.LIBRA.FSAF.ANCHOR_BASED
        return ret

    def forward(self, features: List[torch.Tensor]):
        ab_logits, ab_deltas, af_logits, af_distances = [], [], [], []
        for feature in features:
            cls_tower, box_tower = self.cls_subnet(feature), self.bbox_subnet(feature)
            if self.anchor_based:
                ab_logits.append(self.cls_score(cls_tower))
                ab_deltas.append(self.bbox_pred(box_tower))
            af_logits.append(self.af_cls_score(cls_tower))
            af_distances.append(F.relu(self.af_box_pred(box_tower)))
        return ab_logits, ab_deltas, af_logits, af_distances


@META_ARCH_REGISTRY.register()
class FSAF(LibraRetinaNet):
    """RetinaNet with the FSAF anchor-free module: FSAF alone or AB+FSAF (docs/methods.md#fsaf).

    Select with ``MODEL.META_ARCHITECTURE: "FSAF"``; keys ``MODEL.LIBRA.FSAF.*``
    (:func:`libra_rcnn.add_libra_config`). The anchor-based branch, its anchors, losses and
    decoding are :class:`LibraRetinaNet`'s (Detectron2's RetinaNet, any of its box losses).

    Anchor-free losses (FSAF §3.2), on the pixels of all levels:

    - ``loss_af_cls``: fvcore's sigmoid focal loss (``MODEL.RETINANET.FOCAL_LOSS_*``) summed
      over non-ignored pixels and classes, divided by the number of positive pixels of the
      selected levels;
    - ``loss_af_box``: IoU loss (:func:`iou_loss`, -ln IoU; ``BOX_LOSS_TYPE: "iou"``) or GIoU
      loss (:func:`giou_loss`, torchvision's ``generalized_box_iou_loss`` without its host-device
      syncs; ``"giou"``) averaged over those positive pixels.

    Each instance counts as positive only on its selected level (:func:`select_levels`, or
    FPN's level rule with ``SELECTION: "heuristic"``). On its other levels its effective
    pixels are ignored for its own class, negatives for the others, and have no box loss (the
    reference implementation's rule). Inference: per level, scores above
    ``SCORE_THRESH_TEST``, the top ``TOPK_CANDIDATES_TEST``, then with AB+FSAF both branches'
    boxes go through one class-wise NMS.

    Raises:
        ValueError: at build time, for an ``MODEL.LIBRA.FSAF`` value out of range, naming the key.
    """

    @config_keys(**{name: f"MODEL.LIBRA.FSAF.{name.upper()}" for name in FSAF_ARGUMENTS})
    @configurable
    def __init__(
        self,
        *,
        anchor_based: bool = True,
        effective_scale: float = 0.2,
        ignore_scale: float = 0.5,
        norm_scale: float = 4.0,
        selection: str = "online",
        box_loss_type: str = "iou",
        cls_loss_weight: float = 1.0,
        box_loss_weight: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.anchor_based = anchor_based
        self.effective_scale = check_range("effective_scale", effective_scale, 0.0, 1.0, low_open=True)
        self.ignore_scale = check_range("ignore_scale", ignore_scale, effective_scale, 1.0)
        self.selection = check_choice("selection", selection, FSAF_SELECTIONS)
        self.box_loss_type = check_choice("box_loss_type", box_loss_type, FSAF_BOX_LOSS_TYPES)
        self.cls_loss_weight = check_range("cls_loss_weight", cls_loss_weight, 0.0)
        self.box_loss_weight = check_range("box_loss_weight", box_loss_weight, 0.0)
        check_range("norm_scale", norm_scale, 0.0, low_open=True)
        shapes = self.backbone.output_shape()
        strides = [shapes[f].stride for f in self.head_in_features]
        # One square "anchor" of side S x stride centred on every pixel: the unit and origin of
        # the distances, so that Box2BoxTransformLinear encodes and decodes them.
        self.af_anchor_generator = DefaultAnchorGenerator(
            sizes=[[norm_scale * s] for s in strides], aspect_ratios=[[1.0]], strides=strides, offset=0.5
        )
        self.af_box2box_transform = Box2BoxTransformLinear(normalize_by_size=True)
        self.af_decoding = _Decoding(self.af_box2box_transform)
        self.af_levels = (int(math.log2(strides[0])), int(math.log2(strides[-1])))

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        shapes = ret["backbone"].output_shape()
        ret["head"] = FSAFHead(cfg, [shapes[f] for f in cfg.MODEL.RETINANET.IN_FEATURES])
        ret.update({name: cfg.MODEL.LIBRA.FSAF[name.upper()] for name in FSAF_ARGUMENTS})
        return ret

    def _pixels(self, features: List[torch.Tensor]):
        """Anchor-free "anchors" (P, 4), their centres (P, 2), strides (P,) and level ids (P,)."""
        per_level = self.af_anchor_generator(features)
        anchors = Boxes.cat(per_level).tensor
        # Built from the levels' sizes, known on the host: no device sync.
        level_ids = cat([torch.full((len(b),), i, device=anchors.device) for i, b in enumerate(per_level)])
        strides = cat(
            [torch.full((len(b),), float(s), device=anchors.device) for b, s in zip(per_level, self.af_anchor_generator.strides)]
        )
        return anchors, (anchors[:, :2] + anchors[:, 2:]) / 2, strides, level_ids

    def forward_training(self, images, features, predictions, gt_instances):
        ab_logits, ab_deltas, af_logits, af_distances = predictions
        losses = {}
        if self.anchor_based:
            losses.update(super().forward_training(images, features, [ab_logits, ab_deltas], gt_instances))
        losses.update(self.anchor_free_losses(features, af_logits, af_distances, gt_instances))
        return losses

    def anchor_free_losses(self, features, af_logits, af_distances, gt_instances):
        """``loss_af_cls`` and ``loss_af_box`` of a batch (see the class docstring)."""
        logits, distances = (cat(x, dim=1) for x in self._transpose_dense_predictions([af_logits, af_distances], [self.num_classes, 4]))
        anchors, points, strides, level_ids = self._pixels(features)
        batch, num_pixels = logits.shape[:2]
        gt_boxes = pad_sequence([x.gt_boxes.tensor for x in gt_instances], batch_first=True)
        gt_classes = pad_sequence([x.gt_classes for x in gt_instances], batch_first=True)
        if gt_boxes.shape[1] == 0:  # no GT box in the batch: one padding box keeps shapes valid
            gt_boxes, gt_classes = gt_boxes.new_zeros(batch, 1, 4), gt_classes.new_zeros(batch, 1)
        num_gt = gt_boxes.shape[1]
        lengths = torch.tensor([len(x) for x in gt_instances], device=gt_boxes.device)
        gt_valid = torch.arange(num_gt, device=gt_boxes.device)[None] < lengths[:, None]

        owner, ignored = fsaf_targets(points, strides, gt_boxes, gt_valid, self.effective_scale, self.ignore_scale)
        positive = owner >= 0
        index = owner.clamp(min=0)
        target_boxes = gt_boxes.gather(1, index[..., None].expand(-1, -1, 4))
        # Pixels without a GT box get their own anchor as a stand-in target: a box of positive
        # area keeps the (masked-out) IoU finite in value and gradient.
        target_boxes = torch.where(positive[..., None], target_boxes, anchors[None])
        # One-hot by comparison (F.one_hot checks the classes' range on the host).
        classes = torch.arange(self.num_classes, device=gt_classes.device)
        target_onehot = (gt_classes.gather(1, index)[..., None] == classes).to(logits.dtype) * positive[..., None]

        focal = sigmoid_focal_loss_jit(
            logits, target_onehot, alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma, reduction="none"
        )  # (B, P, K)
        pred_boxes = self.af_box2box_transform.apply_deltas(
            distances.reshape(-1, 4), anchors.repeat(batch, 1)
        ).view(batch, num_pixels, 4)
        if self.box_loss_type == "iou":
            box_loss = iou_loss(pred_boxes, target_boxes)  # (B, P); used where positive
        else:
            box_loss = giou_loss(pred_boxes, target_boxes)

        if self.selection == "online":
            pixel_loss = (focal.sum(-1) + box_loss).detach()
            level = select_levels(pixel_loss, owner, level_ids, len(features), num_gt)
        else:
            level = assign_boxes_to_levels(
                [Boxes(gt_boxes.reshape(-1, 4))], *self.af_levels, CANONICAL_BOX_SIZE, CANONICAL_LEVEL
            ).view(batch, num_gt)
        selected = positive & (level.gather(1, index) == level_ids[None])
        unselected = (positive & ~selected)[..., None]
        weight = (~ignored)[..., None].to(focal.dtype) * (1 - target_onehot * unselected)
        num_positive = selected.sum().clamp(min=1).to(focal.dtype)
        return {
            "loss_af_cls": self.cls_loss_weight * (focal * weight).sum() / num_positive,
            "loss_af_box": self.box_loss_weight * (box_loss * selected).sum() / num_positive,
        }

    def forward_inference(self, images, features, predictions):
        """Both branches' detections of each image, decoded by Detectron2's dense-detector rule
        (the anchor-free distances by their own transform), then one class-wise NMS."""
        ab_logits, ab_deltas, af_logits, af_distances = predictions
        # (decoding, anchors per level, scores per level (N, HWA, K), deltas per level (N, HWA, 4))
        branches = [(self.af_decoding, self.af_anchor_generator(features),
                     *self._transpose_dense_predictions([af_logits, af_distances], [self.num_classes, 4]))]  # fmt: skip
        if self.anchor_based:
            branches.append((self, self.anchor_generator(features),
                             *self._transpose_dense_predictions([ab_logits, ab_deltas], [self.num_classes, 4])))  # fmt: skip
        results: List[Instances] = []
        for i, image_size in enumerate(images.image_sizes):
            parts = [
                decoding._decode_multi_level_predictions(
                    anchors, [x[i].sigmoid() for x in logits], [x[i] for x in deltas],
                    self.test_score_thresh, self.test_topk_candidates, image_size,
                )  # fmt: skip
                for decoding, anchors, logits, deltas in branches
            ]
            pred = Instances.cat(parts)
            keep = batched_nms(pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh)
            results.append(pred[keep[: self.max_detections_per_image]])
        return results
