"""Measures of the sample-level and objective-level imbalance (docs/methods.md#the-three-imbalances).

Libra R-CNN §1 / Fig. 3 and §3.3 / Fig. 5 describe two imbalances by numbers that these
functions compute on a batch, as tensors on the inputs' device (no host-device sync):

- sample level: how the sampled negatives spread over IoU with the GT boxes. Random sampling
  picks over 70 % of its negatives at IoU < 0.05, while about 60 % of the hard (top-loss)
  negatives lie at IoU >= 0.05 (:func:`negative_iou_counts`, :data:`HARD_NEGATIVE_IOU`);
- objective level: which share of the box-regression gradient comes from inliers, the
  samples whose loss is below 1, against outliers; with smooth L1 inliers give about 30 %
  (:func:`box_reg_loss_and_grad`, :func:`inlier_gradient_sums`); and, off the training
  path (it returns Python floats), :func:`fixed_rule_gradient_shares` compares two losses on
  the same residuals with one inlier rule.

``LibraROIHeads`` and ``LibraFastRCNNOutputLayers`` log them during training, and the
commands in :mod:`libra_rcnn.analysis` draw them.
"""
import math
from typing import Tuple

import torch
from fvcore.nn import smooth_l1_loss

from .balanced_l1 import BalancedL1Options
from ..config import check_choice

__all__ = [
    "NEG_IOU_BIN_EDGES",
    "NEG_IOU_BIN_NAMES",
    "HARD_NEGATIVE_IOU",
    "INLIER_LOSS",
    "ELEMENTWISE_BOX_LOSSES",
    "negative_iou_counts",
    "balanced_l1_grad",
    "box_reg_loss_and_grad",
    "inlier_gradient_sums",
    "fixed_rule_gradient_shares",
]

# Lower ends of the IoU bins of the sampled negatives; the last bin is open upwards (it ends at
# the background IoU threshold, 0.5 by default). The first bin is the paper's "easy" range.
NEG_IOU_BIN_EDGES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4)
# Scalar-name suffixes of the bins, in hundredths of IoU ("bg": up to the background threshold).
NEG_IOU_BIN_NAMES = ("00_05", "05_10", "10_20", "20_30", "30_40", "40_bg")
# A negative is counted as hard when its IoU with the nearest GT box is at least this
# (docs/methods.md#the-three-imbalances).
HARD_NEGATIVE_IOU = 0.05
# A sample (RoI) is an inlier when its box-regression loss is below this (Libra R-CNN §3.3).
INLIER_LOSS = 1.0
# Box-regression losses that are a sum of per-coordinate terms of the delta residual.
ELEMENTWISE_BOX_LOSSES = ("smooth_l1", "balanced_l1")


def negative_iou_counts(max_iou: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Count the negatives in each IoU bin of :data:`NEG_IOU_BIN_EDGES`.

    Args:
        max_iou: float (N,), each proposal's maximum IoU over its image's GT boxes
            (0 without GT boxes).
        negatives: bool (N,), the proposals to count (e.g. the sampled negatives).

    Returns:
        int64 (len(NEG_IOU_BIN_EDGES),), on the inputs' device: entry k counts the
        negatives with ``NEG_IOU_BIN_EDGES[k] <= IoU < NEG_IOU_BIN_EDGES[k + 1]`` (the last
        bin has no upper end). The entries sum to ``negatives.sum()``.
    """
    if max_iou.shape != negatives.shape:
        raise ValueError(f"max_iou shape {tuple(max_iou.shape)} != negatives shape {tuple(negatives.shape)}")
    # Negatives at or above each lower edge; a loop over the 6 edges, not over boxes.
    at_least = torch.stack([(negatives & (max_iou >= edge)).sum() for edge in NEG_IOU_BIN_EDGES])
    return at_least - torch.cat([at_least[1:], at_least.new_zeros(1)])


def balanced_l1_grad(diff: torch.Tensor, options: BalancedL1Options) -> torch.Tensor:
    """|dL/dx| of the balanced L1 loss at |x| = ``diff`` (docs/methods.md#balanced-l1-loss, Eq. 7).

    With ``b = exp(gamma / alpha) - 1``:

    - ``"paper"``: ``alpha * ln(b |x| / beta + 1)`` for |x| < beta, ``gamma`` otherwise
      (continuous at beta);
    - ``"mmdet"``: ``alpha * ln(b |x| / beta + 1) + alpha * (b |x| + 1) / (b |x| + beta) - alpha``
      for |x| < beta, ``gamma`` otherwise (equal to the paper's for beta = 1, a jump at beta
      otherwise: 1.70 against 1.5 at beta = 0.11 with the defaults).

    Args:
        diff: float tensor, |x| >= 0 (box-delta units).
        options: alpha, gamma, beta and the variant.

    Returns:
        Tensor of ``diff``'s shape and dtype.
    """
    alpha, gamma, beta = options.alpha, options.gamma, options.beta
    b = math.exp(gamma / alpha) - 1.0
    inlier = alpha * torch.log1p(b * diff / beta)
    if options.variant == "mmdet":
        inlier = inlier + alpha * (b * diff + 1) / (b * diff + beta) - alpha
    return torch.where(diff < beta, inlier, torch.full_like(diff, gamma))


def box_reg_loss_and_grad(
    residual: torch.Tensor,
    loss_type: str,
    smooth_l1_beta: float = 0.0,
    balanced_l1: BalancedL1Options = BalancedL1Options(),
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate loss and gradient magnitude of an element-wise box-regression loss.

    Args:
        residual: float tensor, x = predicted - GT box deltas (Detectron2's
            ``Box2BoxTransform`` units), any shape.
        loss_type: ``"smooth_l1"`` (fvcore's ``smooth_l1_loss``, as Detectron2 computes it;
            L1 for ``smooth_l1_beta`` < 1e-5) or ``"balanced_l1"`` (:func:`balanced_l1_loss`).
        smooth_l1_beta: ``MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA``.
        balanced_l1: the ``MODEL.LIBRA.BALANCED_L1`` parameters.

    Returns:
        (loss, grad): tensors of ``residual``'s shape; ``grad`` is |dL/dx|. For smooth L1
        that is ``min(|x| / beta, 1)`` (1 where x != 0 for L1), for balanced L1
        :func:`balanced_l1_grad`. Neither depends on the loss weight or normalisation.

    Raises:
        ValueError: for a loss type other than ``"smooth_l1"`` or ``"balanced_l1"``.
    """
    check_choice("box regression loss type", loss_type, ELEMENTWISE_BOX_LOSSES)
    diff = residual.abs()
    if loss_type == "balanced_l1":
        zeros = torch.zeros_like(residual)
        return balanced_l1(residual, zeros), balanced_l1_grad(diff, balanced_l1)
    loss = smooth_l1_loss(residual, torch.zeros_like(residual), smooth_l1_beta, reduction="none")
    if smooth_l1_beta < 1e-5:  # fvcore's threshold for plain L1
        return loss, (diff > 0).to(residual.dtype)
    return loss, torch.clamp(diff / smooth_l1_beta, max=1.0)


def inlier_gradient_sums(loss: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Gradient and sample sums of inliers and of all samples (Libra R-CNN §3.3).

    A sample is one row (an RoI's 4 box deltas); it is an inlier when its loss, summed over
    its coordinates, is below :data:`INLIER_LOSS` (= 1). Its gradient is the sum of |dL/dx|
    over its coordinates.

    Args:
        loss, grad: float (R, D), per-coordinate loss and |dL/dx| (:func:`box_reg_loss_and_grad`).
        weight: bool or float (R,), which rows count (e.g. the foreground RoIs).

    Returns:
        float (4,), on the inputs' device: [inlier gradient, total gradient, inlier samples,
        samples]. The inliers' gradient share is entry 0 / entry 1, their share of the samples
        entry 2 / entry 3.
    """
    weight = weight.to(grad.dtype)
    inlier = (loss.sum(dim=1) < INLIER_LOSS).to(grad.dtype) * weight
    sample_grad = grad.sum(dim=1)
    return torch.stack([(inlier * sample_grad).sum(), (weight * sample_grad).sum(), inlier.sum(), weight.sum()])


def fixed_rule_gradient_shares(
    residual: torch.Tensor,
    smooth_l1_beta: float = 1.0,
    balanced_l1: BalancedL1Options = BalancedL1Options(),
) -> dict:
    """Inliers' gradient share of smooth L1 and balanced L1 on the same RoIs, one inlier rule.

    :func:`inlier_gradient_sums` counts as inliers the RoIs whose *own* loss is below 1, so two
    runs with different losses draw the line in different places (smooth L1 at beta 1 reaches
    1 at |x| = 1.5 on one coordinate, balanced L1 at 0.95). Here the inliers are fixed by the
    paper's baseline loss (Libra R-CNN §3.3, docs/methods.md#the-three-imbalances: smooth L1 at ``smooth_l1_beta``,
    summed over the 4 deltas, below 1), and both losses' gradients |dL/dx| (Fig. 5) are
    evaluated on the same residuals: the share the inliers would get under each loss.

    Args:
        residual: float (R, 4), x = predicted - GT box deltas of R foreground RoIs (e.g.
            ``LibraFastRCNNOutputLayers.box_residuals``).
        smooth_l1_beta: beta of the baseline smooth L1 (1.0, the paper's RoI head); > 0.
        balanced_l1: the balanced L1 parameters (``MODEL.LIBRA.BALANCED_L1``).

    Returns:
        dict of Python floats (NaN for R = 0): ``rois`` (R), ``inlier_share`` (share of the RoIs
        that are inliers by the fixed rule), ``smooth_l1_grad_share`` and
        ``balanced_l1_grad_share`` (the inliers' share of each loss's gradient), and
        ``balanced_l1_own_inlier_share`` / ``balanced_l1_own_grad_share`` (the same with
        balanced L1's own loss < 1 as the rule, what training logs).

    Raises:
        ValueError: for ``residual`` not of shape (R, 4) or ``smooth_l1_beta`` <= 0.
    """
    if residual.dim() != 2 or residual.shape[1] != 4:
        raise ValueError(f"residual must be (R, 4) box-delta residuals, got shape {tuple(residual.shape)}")
    if not smooth_l1_beta > 0:
        raise ValueError(f"smooth_l1_beta = {smooth_l1_beta} must be > 0 (the inlier rule needs smooth L1, not L1)")
    weight = torch.ones(residual.shape[0], dtype=residual.dtype, device=residual.device)
    rule_loss, smooth_grad = box_reg_loss_and_grad(residual, "smooth_l1", smooth_l1_beta)
    own_loss, balanced_grad = box_reg_loss_and_grad(residual, "balanced_l1", balanced_l1=balanced_l1)
    sums = torch.stack(
        [
            inlier_gradient_sums(rule_loss, smooth_grad, weight),
            inlier_gradient_sums(rule_loss, balanced_grad, weight),
            inlier_gradient_sums(own_loss, balanced_grad, weight),
        ]
    ).double().cpu()
    share = (sums[:, 0] / sums[:, 1]).tolist()
    rois = float(residual.shape[0])
    return {
        "rois": rois,
        "inlier_share": float(sums[0, 2] / rois) if rois else float("nan"),
        "smooth_l1_grad_share": share[0],
        "balanced_l1_grad_share": share[1],
        "balanced_l1_own_inlier_share": float(sums[2, 2] / rois) if rois else float("nan"),
        "balanced_l1_own_grad_share": share[2],
    }
