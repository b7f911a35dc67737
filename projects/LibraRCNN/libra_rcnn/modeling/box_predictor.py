"""A Fast R-CNN box predictor whose box regression can use the balanced L1 loss."""
import torch

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.utils.events import get_event_storage

from ..config import check_choice, check_int, config_keys
from .balanced_l1 import BOX_REG_LOSS_TYPES, BalancedL1Options
from .imbalance import box_reg_loss_and_grad, inlier_gradient_sums

__all__ = ["LibraFastRCNNOutputLayers"]


class LibraFastRCNNOutputLayers(FastRCNNOutputLayers):
    """Detectron2's ``FastRCNNOutputLayers`` with ``"balanced_l1"`` as a box loss type.

    With ``MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE: "balanced_l1"`` the box regression loss
    is :func:`balanced_l1_loss` (docs/methods.md#balanced-l1-loss) of the predicted vs. the GT ``box_delta``s of
    the foreground RoIs, summed and divided by the number of sampled RoIs, as Detectron2
    normalises its smooth L1 loss; ``BBOX_REG_LOSS_WEIGHT`` still scales it. Every other
    loss type (``smooth_l1``, ``giou``, ...) is Detectron2's own, unchanged.

    Gradient shares (Libra R-CNN §3.3, docs/methods.md#the-three-imbalances): in training, with the loss type
    ``smooth_l1`` or ``balanced_l1``, every ``MODEL.LIBRA.ANALYSIS.GRAD_SHARE_PERIOD``
    iterations (at the iterations where Detectron2's ``PeriodicWriter`` writes, for the
    default 20) two scalars of that iteration's foreground RoIs go to the ``EventStorage``
    (written by :meth:`box_reg_loss` from the balanced L1 loss's own residuals, by
    :meth:`losses` from :meth:`box_residuals` with smooth L1):

    - ``box_reg/inlier_grad_share``: the share of the box-regression gradient magnitude
      (sum of |dL/dx| over the 4 deltas) that comes from inliers, the RoIs whose loss
      (summed over their 4 deltas, before weighting and normalisation) is below 1;
    - ``box_reg/inlier_share``: the share of foreground RoIs that are inliers.

    |dL/dx| is computed in closed form from the delta residuals (see
    :func:`libra_rcnn.modeling.imbalance.box_reg_loss_and_grad`); the loss and its gradient are not
    touched. With balanced L1 this costs one host-device sync per period (the scalars'
    conversion; the residuals are the loss's own), none in the other iterations; with
    ``smooth_l1``, Detectron2's loss keeps no residuals and its ``get_deltas`` check adds one.
    ``giou``/``diou``/``ciou`` write no shares.

    Extra config keys: ``MODEL.LIBRA.BALANCED_L1.{ALPHA, GAMMA, BETA, VARIANT}`` and
    ``MODEL.LIBRA.ANALYSIS.GRAD_SHARE_PERIOD``.

    Raises:
        ArgumentError: at build time, for an unknown loss type, a balanced L1 parameter out of
            range or a negative period, naming the argument (the key when built from a config).
    """

    @config_keys(box_reg_loss_type="MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE",
                 grad_share_period="MODEL.LIBRA.ANALYSIS.GRAD_SHARE_PERIOD")  # fmt: skip
    @configurable
    def __init__(
        self,
        input_shape,
        *,
        balanced_l1: BalancedL1Options = BalancedL1Options(),
        grad_share_period: int = 20,
        **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        check_choice("box_reg_loss_type", self.box_reg_loss_type, BOX_REG_LOSS_TYPES)
        self.balanced_l1 = balanced_l1
        self.grad_share_period = check_int("grad_share_period", grad_share_period, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["balanced_l1"] = BalancedL1Options.from_config(cfg.MODEL.LIBRA.BALANCED_L1, "MODEL.LIBRA.BALANCED_L1")
        ret["grad_share_period"] = cfg.MODEL.LIBRA.ANALYSIS.GRAD_SHARE_PERIOD
        return ret

    def losses(self, predictions, proposals):
        """Detectron2's losses; on the periods' iterations also the gradient shares (see above).

        With balanced L1 the shares are written by :meth:`box_reg_loss` from the loss's own
        residuals; with Detectron2's smooth L1 from :meth:`box_residuals`.
        """
        losses = super().losses(predictions, proposals)
        if self.box_reg_loss_type == "smooth_l1" and len(proposals) and self._grad_shares_due():
            self._put_grad_shares(*self.box_residuals(predictions[1], proposals))
        return losses

    def _grad_shares_due(self) -> bool:
        """Whether this training iteration writes the gradient shares (never outside an
        ``EventStorage``, where there is no iteration to write them to)."""
        period = self.grad_share_period
        if not (self.training and period > 0):
            return False
        try:
            storage = get_event_storage()
        except AssertionError:  # called outside a training loop (Detectron2 asserts a storage)
            return False
        return (storage.iter + 1) % period == 0

    @torch.no_grad()
    def box_residuals(self, pred_deltas, proposals):
        """Box-delta residuals of the sampled RoIs, as the box regression loss sees them.

        Args:
            pred_deltas: float (R, 4) or (R, num_classes * 4), the second output of
                :meth:`forward` on the R RoIs of ``proposals``.
            proposals: list of ``Instances`` with ``proposal_boxes``, ``gt_classes`` and (for
                images with GT boxes) ``gt_boxes``, as the RoI heads sampled them in training.

        Returns:
            (foreground, residual): bool (R,), the RoIs of a GT class; float32 (R, 4),
            x = predicted - GT box deltas (``Box2BoxTransform`` units) of each RoI's GT class
            (meaningless for background RoIs).
        """
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals], dim=0)
        foreground, pred_deltas, gt_deltas = self._foreground_deltas(proposal_boxes, gt_boxes, pred_deltas, gt_classes)
        return foreground, pred_deltas.float() - gt_deltas.float()

    def _put_grad_shares(self, foreground: torch.Tensor, residual: torch.Tensor) -> None:
        """Write the inliers' gradient share and count (see above) of the foreground RoIs'
        residuals (bool (R,), float32 (R, 4)); one host-device sync."""
        loss, grad = box_reg_loss_and_grad(residual, self.box_reg_loss_type, self.smooth_l1_beta, self.balanced_l1)
        inlier_grad, total_grad, inliers, samples = inlier_gradient_sums(loss, grad, foreground).tolist()  # one sync
        if samples > 0:
            storage = get_event_storage()
            storage.put_scalar("box_reg/inlier_grad_share", inlier_grad / max(total_grad, 1e-12), smoothing_hint=False)
            storage.put_scalar("box_reg/inlier_share", inliers / samples, smoothing_hint=False)

    def _foreground_deltas(self, proposal_boxes, gt_boxes, pred_deltas, gt_classes):
        """(foreground bool (R,), predicted deltas of each RoI's GT class (R, 4), GT deltas (R, 4))."""
        box_dim = proposal_boxes.shape[1]
        foreground = (gt_classes >= 0) & (gt_classes < self.num_classes)
        if pred_deltas.shape[1] != box_dim:
            # Pick each RoI's deltas of its GT class; background RoIs are masked out by the caller.
            cls = gt_classes.clamp(0, self.num_classes - 1)
            rows = torch.arange(pred_deltas.shape[0], device=pred_deltas.device)
            pred_deltas = pred_deltas.view(-1, self.num_classes, box_dim)[rows, cls]
        return foreground, pred_deltas, self.box2box_transform.get_deltas(proposal_boxes, gt_boxes)

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
        foreground, pred_deltas, gt_deltas = self._foreground_deltas(proposal_boxes, gt_boxes, pred_deltas, gt_classes)
        if gt_classes.numel() and self._grad_shares_due():  # the statistic from this loss's own residuals
            self._put_grad_shares(foreground, pred_deltas.detach().float() - gt_deltas.float())
        loss = self.balanced_l1(pred_deltas, gt_deltas)
        # A mask, not an index: no host-device synchronisation.
        loss = torch.where(foreground[:, None], loss, torch.zeros_like(loss)).sum()
        return loss / max(gt_classes.numel(), 1.0)
