"""Balanced L1 loss (Libra R-CNN §3.3, Eq. 4–9; docs/methods.md#balanced-l1-loss)."""
import math
from dataclasses import dataclass
from typing import Optional

import torch

from detectron2.config import CfgNode

from ..config import check_choice, check_range, config_keys

__all__ = ["balanced_l1_loss", "BalancedL1Options", "BOX_REG_LOSS_TYPES", "BALANCED_L1_VARIANTS"]

# Detectron2's box regression loss types, plus the balanced L1 loss.
BOX_REG_LOSS_TYPES = ("smooth_l1", "giou", "diou", "ciou", "balanced_l1")
# "paper": |x| scaled by 1/beta, continuous gradient; "mmdet": the reference implementation's formula.
BALANCED_L1_VARIANTS = ("paper", "mmdet")


def balanced_l1_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
    reduction: str = "none",
    variant: str = "paper",
    weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Balanced L1 loss of the regression error ``x = input - target`` (docs/methods.md#balanced-l1-loss).

    With ``b = exp(gamma / alpha) - 1`` (so that ``alpha * ln(b + 1) = gamma``):

    - ``variant="paper"``, with ``u = |x| / beta``::

          L = beta * ((alpha / b) * (b u + 1) * ln(b u + 1) - alpha u)   if u < 1
          L = beta * (gamma u + gamma / b - alpha)                         otherwise

      so dL/d|x| = alpha * ln(b u + 1) inside and gamma outside: value and gradient are
      continuous at |x| = beta. For beta = 1 this is Eq. 8 of the paper.
    - ``variant="mmdet"`` (the reference implementation)::

          L = (alpha / b) * (b |x| + 1) * ln(b |x| / beta + 1) - alpha |x|   if |x| < beta
          L = gamma |x| + gamma / b - alpha * beta                            otherwise

      continuous in value, with a gradient jump at |x| = beta when beta != 1.

    Both variants agree for beta = 1 (e.g. L(0.5) = 0.400568, L(1) = 1.078594 with the
    defaults).

    Args:
        input, target: tensors of the same shape, any float dtype (box deltas in
            Detectron2's ``Box2BoxTransform`` units); the loss is computed in float32 for
            16-bit inputs (as under ``torch.autocast``), in float64 for float64 ones.
        alpha: gradient scale of inliers, > 0.
        gamma: gradient of outliers (the bound on the gradient), > 0.
        beta: transition point in |x|, > 0.
        reduction: ``"none"`` (element-wise, same shape as ``input``), ``"sum"`` or ``"mean"``.
        variant: ``"paper"`` or ``"mmdet"``.
        weight: optional element-wise weights, broadcastable to ``input``; applied before
            the reduction.

    Returns:
        The loss, float32 or float64: same shape as ``input`` for ``"none"``, else a scalar tensor.

    Raises:
        ValueError: for a non-positive alpha, gamma or beta, an unknown reduction or variant,
            or ``input`` and ``target`` of different shapes.
    """
    check_range("alpha", alpha, 0, low_open=True)
    check_range("gamma", gamma, 0, low_open=True)
    check_range("beta", beta, 0, low_open=True)
    check_choice("variant", variant, BALANCED_L1_VARIANTS)
    check_choice("reduction", reduction, ("none", "sum", "mean"))
    if input.shape != target.shape:
        raise ValueError(f"input shape {tuple(input.shape)} != target shape {tuple(target.shape)}")

    b = math.exp(gamma / alpha) - 1.0
    # At least float32: in 16 bits the inlier branch, a difference of two nearly equal terms for
    # small residuals, loses up to 3 % (bfloat16; benchmarks/precision.py).
    dtype = torch.promote_types(torch.promote_types(input.dtype, target.dtype), torch.float32)
    diff = torch.abs(input.to(dtype) - target.to(dtype))
    if variant == "paper":
        u = diff / beta
        inlier = (alpha / b) * (b * u + 1) * torch.log1p(b * u) - alpha * u
        outlier = gamma * u + (gamma / b - alpha)
        loss = beta * torch.where(u < 1.0, inlier, outlier)
    else:
        inlier = (alpha / b) * (b * diff + 1) * torch.log1p(b * diff / beta) - alpha * diff
        outlier = gamma * diff + (gamma / b - alpha * beta)
        loss = torch.where(diff < beta, inlier, outlier)

    if weight is not None:
        loss = loss * weight
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else loss.sum()
    return loss


@dataclass(frozen=True)
class BalancedL1Options:
    """The balanced L1 loss's parameters, checked; calling it computes :func:`balanced_l1_loss`.

    Raises:
        ArgumentError: for a non-positive alpha, gamma or beta or an unknown variant, naming
            the field (the config key when built by :meth:`from_config`).
    """

    alpha: float = 0.5
    gamma: float = 1.5
    beta: float = 1.0
    variant: str = "paper"

    def __post_init__(self):
        for name in ("alpha", "gamma", "beta"):
            check_range(name, getattr(self, name), 0, low_open=True)
        check_choice("variant", self.variant, BALANCED_L1_VARIANTS)

    @classmethod
    def from_config(cls, node: CfgNode, key: str) -> "BalancedL1Options":
        """The options of a config node with ``ALPHA``, ``GAMMA``, ``BETA``, ``VARIANT``, such as
        ``MODEL.LIBRA.BALANCED_L1`` (the RoI box head's) or ``MODEL.LIBRA.RETINANET.BALANCED_L1``;
        ``key`` is the node's name, for the errors."""
        with config_keys(**{name: f"{key}.{name.upper()}" for name in ("alpha", "gamma", "beta", "variant")}):
            return cls(alpha=node.ALPHA, gamma=node.GAMMA, beta=node.BETA, variant=node.VARIANT)

    def __call__(
        self, input: torch.Tensor, target: torch.Tensor, reduction: str = "none", weight: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        return balanced_l1_loss(
            input, target, self.alpha, self.gamma, self.beta, reduction=reduction, variant=self.variant, weight=weight
        )
