"""RoI heads with IoU-balanced sampling and the balanced L1 box predictor."""
from typing import List

import torch

from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage

from ..config import config_keys
from .box_predictor import LibraFastRCNNOutputLayers
from .imbalance import HARD_NEGATIVE_IOU, NEG_IOU_BIN_EDGES, NEG_IOU_BIN_NAMES, negative_iou_counts
from .sampling import BalancedRoISampler

__all__ = ["LibraROIHeads", "build_roi_sampler", "label_proposals"]


def _background_iou_thresh(matcher) -> float:
    """Upper end of the IoU interval that a Detectron2 ``Matcher`` labels 0 (background)."""
    uppers = [hi for label, hi in zip(matcher.labels, matcher.thresholds[1:]) if label == 0]
    if not uppers:
        raise ValueError(
            "MODEL.ROI_HEADS.IOU_LABELS has no background label 0: "
            f"labels {matcher.labels} for thresholds {matcher.thresholds[1:-1]}"
        )
    return float(max(uppers))


def label_proposals(proposal_matcher, num_classes: int, proposal_boxes: Boxes, targets: Instances):
    """Match one image's proposals to its GT boxes, as Detectron2's ``ROIHeads`` does.

    Args:
        proposal_matcher: the RoI heads' Detectron2 ``Matcher``.
        num_classes: foreground classes; background is labelled ``num_classes``.
        proposal_boxes: ``Boxes`` (N, 4), XYXY_ABS pixels.
        targets: ``Instances`` with ``gt_boxes`` (G, 4) and ``gt_classes`` (G,).

    Returns:
        (gt_classes, max_iou, matched_idxs): int64 (N,) class in [0, num_classes),
        ``num_classes`` for background or -1 for ignored; float (N,) maximum IoU over the GT
        boxes (0 without GT boxes); int64 (N,) index of the matched GT box (0 without GT boxes).
    """
    iou = pairwise_iou(targets.gt_boxes, proposal_boxes)
    matched_idxs, matched_labels = proposal_matcher(iou)
    if len(targets) > 0:
        classes = targets.gt_classes[matched_idxs]
        # torch.where rather than masked assignment, which reads the mask's positions on the host.
        classes = torch.where(matched_labels == 0, torch.full_like(classes, num_classes), classes)
        classes = torch.where(matched_labels == -1, torch.full_like(classes, -1), classes)
        max_iou = iou.max(dim=0).values
    else:
        classes = torch.full_like(matched_idxs, num_classes)
        max_iou = torch.zeros(len(proposal_boxes), device=matched_idxs.device)
    return classes, max_iou, matched_idxs


def build_roi_sampler(cfg, proposal_matcher) -> BalancedRoISampler:
    """The RoI sampler of ``MODEL.LIBRA.SAMPLER`` and ``MODEL.ROI_HEADS`` (docs/methods.md#iou-balanced-sampling).

    Args:
        cfg: a config with the project's keys (:func:`add_libra_config`).
        proposal_matcher: the RoI heads' Detectron2 ``Matcher``; its background interval's
            upper end is the sampler's background IoU threshold.

    Raises:
        ValueError: for a sampler key out of range, naming it.
    """
    names = ("pos", "neg", "num_bins", "binning", "floor_thr", "floor_fraction")  # MODEL.LIBRA.SAMPLER.<NAME>
    keys = {name: f"MODEL.LIBRA.SAMPLER.{name.upper()}" for name in names}
    with config_keys(bg_iou_thresh="MODEL.ROI_HEADS.IOU_THRESHOLDS", **keys):
        return BalancedRoISampler(
            cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE,
            cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION,
            bg_iou_thresh=_background_iou_thresh(proposal_matcher),
            **{name: cfg.MODEL.LIBRA.SAMPLER[name.upper()] for name in names},
        )


@ROI_HEADS_REGISTRY.register()
class LibraROIHeads(StandardROIHeads):
    """``StandardROIHeads`` with Libra R-CNN's RoI sampling and box predictor.

    - Sampling (docs/methods.md#iou-balanced-sampling): IoU-balanced negatives and instance-balanced positives,
      configured by ``MODEL.LIBRA.SAMPLER``; see :class:`BalancedRoISampler`. The whole batch
      is sampled in one vectorised call on the proposals' device.
    - Box predictor: :class:`LibraFastRCNNOutputLayers`, which adds ``"balanced_l1"`` to
      ``MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE`` and is otherwise Detectron2's.

    Everything else is Detectron2's: GT boxes are added as proposals
    (``MODEL.ROI_HEADS.PROPOSAL_APPEND_GT``), matching, labels and the ``gt_*`` fields
    copied to the sampled proposals (so mask and keypoint heads work unchanged), and the
    ``roi_head/num_fg_samples`` / ``num_bg_samples`` scalars.

    Sampling statistics (docs/methods.md#the-three-imbalances, Libra R-CNN Fig. 3), written to the ``EventStorage``
    every iteration, per image (mean over the batch) like ``num_bg_samples``:

    - ``roi_head/num_bg_iou_{00_05, 05_10, 10_20, 20_30, 30_40, 40_bg}``: sampled negatives
      whose maximum IoU with the image's GT boxes lies in [0, 0.05), [0.05, 0.1), [0.1, 0.2),
      [0.2, 0.3), [0.3, 0.4) and [0.4, background threshold); they sum to ``num_bg_samples``.
    - ``roi_head/hard_negative_share``: the share of the batch's sampled negatives with IoU
      >= 0.05, the paper's boundary between easy negatives and the range where about 60 % of
      the hard (top-loss) negatives lie. It is omitted when no negative was sampled.

    They ride on the one host-device sync that the sampling already needs (no extra one).

    Select with ``MODEL.ROI_HEADS.NAME: "LibraROIHeads"``.
    """

    @configurable
    def __init__(self, *, sampler: BalancedRoISampler, **kwargs):
        super().__init__(**kwargs)
        self.sampler = sampler
        # Optional generator for the sampler's draws; None uses the device's default one.
        self.sampling_generator = None

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["sampler"] = build_roi_sampler(cfg, ret["proposal_matcher"])
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        if "box_head" in ret:
            ret["box_predictor"] = LibraFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: List[Instances], targets: List[Instances]
    ) -> List[Instances]:
        """Match proposals to GT boxes and sample the RoIs of every image.

        Args:
            proposals: per image, ``Instances`` with ``proposal_boxes`` (XYXY_ABS pixels) and
                ``objectness_logits``.
            targets: per image, ``Instances`` with ``gt_boxes``, ``gt_classes`` and any other
                ``gt_*`` fields.

        Returns:
            per image, the sampled proposals (positives first) with ``gt_classes``
            (background = num_classes) and, where the image has GT boxes, every other
            ``gt_*`` field of the matched GT box: the same contract as Detectron2's
            ``ROIHeads.label_and_sample_proposals``.
        """
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)

        gt_classes, max_iou, gt_index, image_index, matches = [], [], [], [], []
        num_gts = 0
        for i, (proposals_i, targets_i) in enumerate(zip(proposals, targets)):
            classes, best_iou, matched_idxs = label_proposals(
                self.proposal_matcher, self.num_classes, proposals_i.proposal_boxes, targets_i
            )
            gt_classes.append(classes)
            max_iou.append(best_iou)
            gt_index.append(matched_idxs + num_gts)
            image_index.append(torch.full_like(matched_idxs, i))
            matches.append(matched_idxs)
            num_gts += len(targets_i)

        gt_classes = torch.cat(gt_classes)
        image_index = torch.cat(image_index)
        max_iou = torch.cat(max_iou)
        pos, neg = self.sampler(
            gt_classes,
            max_iou,
            torch.cat(gt_index),
            image_index,
            num_images=len(proposals),
            num_gts=num_gts,
            num_classes=self.num_classes,
            generator=self.sampling_generator,
        )

        # The per-image counts of sampled RoIs, read with the statistics in one host-device sync;
        # knowing their sum, nonzero_static finds the sampled indices without another.
        sampled_mask = pos | neg
        per_image = torch.zeros(len(proposals), dtype=torch.int64, device=sampled_mask.device)
        per_image.scatter_add_(0, image_index, sampled_mask.long())
        n = len(proposals)
        values = torch.cat([per_image, pos.sum().view(1), negative_iou_counts(max_iou, neg)]).tolist()  # one sync
        counts, num_fg, bg_per_bin = values[:n], values[n], values[n + 1 :]
        # Sampled indices over the batch, grouped by image with positives first.
        sampled = torch.nonzero_static(sampled_mask, size=sum(counts)).squeeze(1)
        order = torch.sort(image_index[sampled] * 2 + neg[sampled].long(), stable=True).indices
        sampled = sampled[order]

        proposals_with_gt = []
        offset = 0
        for proposals_i, targets_i, matched_idxs, idx in zip(
            proposals, targets, matches, sampled.split(counts)
        ):
            local = idx - offset
            offset += len(proposals_i)
            proposals_i = proposals_i[local]
            proposals_i.gt_classes = gt_classes[idx]
            if len(targets_i) > 0:
                sampled_targets = matched_idxs[local]
                for name, value in targets_i.get_fields().items():
                    if name.startswith("gt_") and not proposals_i.has(name):
                        proposals_i.set(name, value[sampled_targets])
            proposals_with_gt.append(proposals_i)

        storage = get_event_storage()
        num_images = max(len(proposals), 1)
        storage.put_scalar("roi_head/num_fg_samples", num_fg / num_images)
        storage.put_scalar("roi_head/num_bg_samples", (sum(counts) - num_fg) / num_images)
        for name, count in zip(NEG_IOU_BIN_NAMES, bg_per_bin):
            storage.put_scalar(f"roi_head/num_bg_iou_{name}", count / num_images)
        num_bg = sum(bg_per_bin)
        if num_bg > 0:
            hard = sum(c for edge, c in zip(NEG_IOU_BIN_EDGES, bg_per_bin) if edge >= HARD_NEGATIVE_IOU)
            storage.put_scalar("roi_head/hard_negative_share", hard / num_bg)
        return proposals_with_gt
