"""RoI heads with IoU-balanced sampling and the balanced L1 box predictor."""
from typing import List

import torch

from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Instances, pairwise_iou
from detectron2.utils.events import get_event_storage

from .box_predictor import LibraFastRCNNOutputLayers
from .sampling import BalancedRoISampler

__all__ = ["LibraROIHeads"]


def _background_iou_thresh(matcher) -> float:
    """Upper end of the IoU interval that a Detectron2 ``Matcher`` labels 0 (background)."""
    uppers = [hi for label, hi in zip(matcher.labels, matcher.thresholds[1:]) if label == 0]
    if not uppers:
        raise ValueError(
            "MODEL.ROI_HEADS.IOU_LABELS has no background label 0: "
            f"labels {matcher.labels} for thresholds {matcher.thresholds[1:-1]}"
        )
    return float(max(uppers))


@ROI_HEADS_REGISTRY.register()
class LibraROIHeads(StandardROIHeads):
    """``StandardROIHeads`` with Libra R-CNN's RoI sampling and box predictor.

    - Sampling (METHODS.md §2): IoU-balanced negatives and instance-balanced positives,
      configured by ``MODEL.LIBRA.SAMPLER``; see :class:`BalancedRoISampler`. The whole batch
      is sampled in one vectorised call on the proposals' device.
    - Box predictor: :class:`LibraFastRCNNOutputLayers`, which adds ``"balanced_l1"`` to
      ``MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE`` and is otherwise Detectron2's.

    Everything else is Detectron2's: GT boxes are added as proposals
    (``MODEL.ROI_HEADS.PROPOSAL_APPEND_GT``), matching, labels and the ``gt_*`` fields
    copied to the sampled proposals (so mask and keypoint heads work unchanged), and the
    ``roi_head/num_fg_samples`` / ``num_bg_samples`` scalars.

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
        s = cfg.MODEL.LIBRA.SAMPLER
        ret["sampler"] = BalancedRoISampler(
            batch_size_per_image=ret["batch_size_per_image"],
            positive_fraction=ret["positive_fraction"],
            pos=s.POS,
            neg=s.NEG,
            num_bins=s.NUM_BINS,
            binning=s.BINNING,
            floor_thr=s.FLOOR_THR,
            floor_fraction=s.FLOOR_FRACTION,
            bg_iou_thresh=_background_iou_thresh(ret["proposal_matcher"]),
        )
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
            iou = pairwise_iou(targets_i.gt_boxes, proposals_i.proposal_boxes)
            matched_idxs, matched_labels = self.proposal_matcher(iou)
            if len(targets_i) > 0:
                classes = targets_i.gt_classes[matched_idxs]
                classes[matched_labels == 0] = self.num_classes
                classes[matched_labels == -1] = -1
                best_iou = iou.max(dim=0).values
            else:
                classes = torch.full_like(matched_idxs, self.num_classes)
                best_iou = torch.zeros(len(proposals_i), device=matched_idxs.device)
            gt_classes.append(classes)
            max_iou.append(best_iou)
            gt_index.append(matched_idxs + num_gts)
            image_index.append(torch.full_like(matched_idxs, i))
            matches.append(matched_idxs)
            num_gts += len(targets_i)

        gt_classes = torch.cat(gt_classes)
        image_index = torch.cat(image_index)
        pos, neg = self.sampler(
            gt_classes,
            torch.cat(max_iou),
            torch.cat(gt_index),
            image_index,
            num_images=len(proposals),
            num_gts=num_gts,
            num_classes=self.num_classes,
            generator=self.sampling_generator,
        )

        # Sampled indices over the batch, grouped by image with positives first.
        sampled = torch.nonzero(pos | neg).squeeze(1)
        order = torch.sort(image_index[sampled] * 2 + neg[sampled].long(), stable=True).indices
        sampled = sampled[order]
        per_image = torch.zeros(len(proposals), dtype=torch.int64, device=sampled.device)
        per_image.scatter_add_(0, image_index[sampled], torch.ones_like(sampled))
        *counts, num_fg = torch.cat([per_image, pos.sum().view(1)]).tolist()  # one sync

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
        return proposals_with_gt
