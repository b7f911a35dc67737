"""IoU-balanced negative and instance-balanced positive sampling of RoIs.

Libra R-CNN §3.1, Eq. 1–2; docs/methods.md#iou-balanced-sampling.

Every function here works on the proposals of a whole batch at once, flattened into one
dimension with an ``image_index`` per proposal, and returns boolean masks. Draws are made
without replacement by ranking the candidates inside groups (one group per IoU bin, GT box or
image) in a random order (:class:`~libra_rcnn.modeling.random_order.RandomOrder`), so there is
no Python loop over boxes and no host-device synchronisation: the quotas stay tensors on the
proposals' device from start to end.

A random order costs a sort of the whole batch, the bulk of the sampler's time; one order
serves several draws where that leaves each draw uniform: draws on disjoint candidate sets
(positives and negatives, IoU bins and the negatives below the floor), or draws of which
at most one takes anything in each image. :class:`BalancedRoISampler`, which training runs,
is built from the public functions and passes them shared orders: it sorts twice per batch
(three times with a floor), where drawing each step with its own order sorted five times.
"""
import math
from typing import Optional, Tuple

import torch

from ..config import ArgumentError, check_choice, check_int, check_range
from .random_order import RandomOrder, sample_within_groups

__all__ = [
    "sample_within_groups",
    "instance_balanced_positives",
    "random_negatives",
    "iou_balanced_negatives",
    "iou_bins",
    "BalancedRoISampler",
    "POS_SAMPLERS",
    "NEG_SAMPLERS",
    "BINNINGS",
]

POS_SAMPLERS = ("instance_balanced", "random")
NEG_SAMPLERS = ("iou_balanced", "random")
BINNINGS = ("paper", "mmdet")


def count_per_image(mask: torch.Tensor, image_index: torch.Tensor, num_images: int) -> torch.Tensor:
    """int64 (num_images,): number of True elements of ``mask`` in each image."""
    counts = torch.zeros(num_images, dtype=torch.int64, device=mask.device)
    return counts.scatter_add_(0, image_index, mask.to(torch.int64))


def instance_balanced_positives(
    pos_mask: torch.Tensor,
    gt_index: torch.Tensor,
    image_index: torch.Tensor,
    num_images: int,
    num_gts: int,
    num_expected: int,
    generator: Optional[torch.Generator] = None,
    *,
    by_gt: Optional[RandomOrder] = None,
    by_image: Optional[RandomOrder] = None,
) -> torch.Tensor:
    """Instance-balanced positive sampling (docs/methods.md#iou-balanced-sampling, the reference configuration).

    In each image with more than P = ``num_expected`` positive candidates, and G distinct
    GT boxes among them: every GT box gives at most ``round(P / G) + 1`` of its own
    positives, drawn uniformly; a shortfall is filled uniformly from the positives not yet
    drawn; an excess is subsampled uniformly down to P. An image with at most P candidates
    keeps them all.

    Args:
        pos_mask: bool (N,), the positive candidates of the whole batch.
        gt_index: int64 (N,), the matched GT box of each proposal as an index in
            [0, num_gts) over the batch's GT boxes (unique across images); values at
            non-positive proposals are ignored.
        image_index: int64 (N,), the image of each proposal in [0, num_images).
        num_images: images in the batch.
        num_gts: GT boxes in the batch.
        num_expected: P, positives wanted per image.
        generator: optional generator on the proposals' device.
        by_gt, by_image: random orders to draw with (:class:`RandomOrder`), made here when
            None: ``by_gt`` must put every positive in group ``gt_index`` (other groups draw
            nothing); ``by_image`` groups by image and is independent of ``by_gt``.

    Returns:
        bool (N,): the sampled positives; exactly ``min(P, #candidates)`` per image.
    """
    if by_gt is None:
        by_gt = RandomOrder(torch.where(pos_mask, gt_index, torch.full_like(gt_index, -1)), num_gts, generator)
    if by_image is None:
        by_image = RandomOrder(image_index, num_images, generator)
    device = pos_mask.device
    gt_slot = torch.where(pos_mask, gt_index, torch.full_like(gt_index, num_gts))
    # Which GT boxes have positives, and in which image each of them lies.
    has_pos = torch.zeros(num_gts + 1, dtype=torch.int64, device=device)
    has_pos.scatter_(0, gt_slot, torch.ones_like(gt_slot))
    gt_image = torch.zeros(num_gts + 1, dtype=torch.int64, device=device)
    gt_image.scatter_(0, gt_slot, image_index)
    has_pos, gt_image = has_pos[:num_gts], gt_image[:num_gts]
    num_distinct = torch.zeros(num_images, dtype=torch.int64, device=device)
    num_distinct.scatter_add_(0, gt_image, has_pos)

    num_candidates = count_per_image(pos_mask, image_index, num_images)
    per_gt = torch.round(num_expected / num_distinct.clamp(min=1).to(torch.float64)).to(torch.int64) + 1
    # An image with at most P candidates takes them all.
    per_gt = torch.where(num_candidates <= num_expected, num_candidates, per_gt)
    drawn = by_gt.draw(pos_mask, per_gt.index_select(0, gt_image))
    num_drawn = count_per_image(drawn, image_index, num_images)
    # In each image, either the caps left a shortfall, filled from the positives not drawn,
    # or too many were drawn, subsampled to P; never both, so the two share one order.
    keep = by_image.draw(drawn, torch.full_like(num_drawn, num_expected))
    return keep | by_image.draw(pos_mask & ~drawn, (num_expected - num_drawn).clamp(min=0))



def random_negatives(
    neg_mask: torch.Tensor,
    image_index: torch.Tensor,
    num_images: int,
    num_expected: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    *,
    by_image: Optional[RandomOrder] = None,
) -> torch.Tensor:
    """Random negative sampling (docs/methods.md#iou-balanced-sampling, p = N / M), as Detectron2's
    ``subsample_labels``.

    Args:
        neg_mask: bool (N,), the negative candidates.
        image_index: int64 (N,), the image of each proposal.
        num_images: images in the batch.
        num_expected: int64 (num_images,), negatives wanted per image.
        generator: optional generator on the proposals' device.
        by_image: a random order by image to draw with (made here when None).

    Returns:
        bool (N,): the sampled negatives, ``min(num_expected[i], #candidates)`` per image.
    """
    by_image = by_image or RandomOrder(image_index, num_images, generator)
    return by_image.draw(neg_mask, num_expected)


def _check_negative_options(num_bins, binning: str, bg_iou_thresh: float, floor_thr: float, floor_fraction: float):
    check_int("num_bins", num_bins, 1)
    check_choice("binning", binning, BINNINGS)
    check_range("floor_fraction", floor_fraction, 0.0, 1.0)
    if not (floor_thr == -1.0 or 0.0 <= floor_thr < bg_iou_thresh):
        raise ArgumentError(
            "floor_thr",
            f"floor_thr = {floor_thr!r} must be -1 (off) or lie in [0, {bg_iou_thresh}) "
            "(below the background IoU threshold)",
        )


def iou_bins(
    neg_mask: torch.Tensor,
    max_iou: torch.Tensor,
    image_index: torch.Tensor,
    num_images: int,
    num_bins: int,
    bg_iou_thresh: float,
    binning: str,
    floor_thr: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The negatives above the floor and the IoU bin of each, for :func:`iou_balanced_negatives`.

    Returns:
        (binned, group): bool (N,), the negatives that are binned; int64 (N,), the group
        ``image * num_bins + bin`` of each, -1 outside every bin.
    """
    low = max(floor_thr, 0.0)
    if binning == "paper":
        # Bins over [low, bg_iou_thresh); with the floor off, low = 0 and every negative is binned.
        binned = neg_mask & (max_iou >= low)
        bins = torch.floor((max_iou - low) * (num_bins / (bg_iou_thresh - low))).to(torch.int64)
        in_bins = binned
    else:
        # Bins over [low, the image's max IoU); IoU == low only binned when the floor is positive.
        binned = neg_mask & ((max_iou >= low) if low > 0 else (max_iou > 0))
        image_max = torch.zeros(num_images, dtype=max_iou.dtype, device=max_iou.device)
        image_max = image_max.scatter_reduce(0, image_index, max_iou, reduce="amax")
        width = ((image_max - low) / num_bins).index_select(0, image_index)
        safe_width = torch.where(width > 0, width, torch.ones_like(width))
        bins = torch.floor((max_iou - low) / safe_width).to(torch.int64)
        # As in the reference, the top end (IoU == the image's max) lies in no bin.
        in_bins = binned & (width > 0) & (bins < num_bins)
    groups = image_index * num_bins + bins.clamp(0, num_bins - 1)
    return binned, torch.where(in_bins, groups, torch.full_like(groups, -1))



def iou_balanced_negatives(
    neg_mask: torch.Tensor,
    max_iou: torch.Tensor,
    image_index: torch.Tensor,
    num_images: int,
    num_expected: torch.Tensor,
    num_bins: int = 3,
    bg_iou_thresh: float = 0.5,
    binning: str = "paper",
    floor_thr: float = -1.0,
    floor_fraction: float = 0.0,
    generator: Optional[torch.Generator] = None,
    *,
    bins: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    by_bin: Optional[RandomOrder] = None,
    bin_offset: int = 0,
    by_image: Optional[RandomOrder] = None,
) -> torch.Tensor:
    """IoU-balanced negative sampling (Libra R-CNN §3.1, Eq. 2; docs/methods.md#iou-balanced-sampling).

    With N = ``num_expected[i]`` negatives wanted in image i and K = ``num_bins``:

    - ``binning="paper"``: the IoU interval [lo, ``bg_iou_thresh``) is split into K bins of
      equal width and ``floor(N / K)`` negatives are drawn uniformly from each bin (all of
      a bin with fewer); lo = 0, or ``floor_thr`` when ``floor_thr >= 0``, in which case
      ``floor(N * floor_fraction)`` further negatives are drawn at random from those with
      IoU < ``floor_thr`` (and the bins share the rest of N).
    - ``binning="mmdet"``: mmdetection's ``IoUBalancedNegSampler`` after its first call
      (``floor_thr`` of -1 acts as 0): bins span [floor, max IoU of the image's proposals),
      only negatives with IoU > 0 (>= ``floor_thr`` when positive) are binned, the binned
      set fills its own shortfall first, then negatives below the floor fill the rest.

    In both modes the remaining shortfall is finally filled uniformly from the negatives not
    yet drawn, so an image gets ``min(N, #negatives)`` negatives and never a duplicate.

    Args:
        neg_mask: bool (N_all,), the negative candidates of the whole batch.
        max_iou: float (N_all,), each proposal's maximum IoU over its image's GT boxes (0
            without GT boxes); for ``"mmdet"`` the positives' IoU sets the bins' upper end.
        image_index: int64 (N_all,), the image of each proposal in [0, num_images).
        num_images: images in the batch.
        num_expected: int64 (num_images,), negatives wanted per image.
        num_bins: K >= 1.
        bg_iou_thresh: upper end of the negatives' IoU range (the matcher's background
            threshold), used by ``"paper"``.
        binning: ``"paper"`` or ``"mmdet"``.
        floor_thr: IoU floor; -1 turns it off.
        floor_fraction: in [0, 1].
        generator: optional generator on the proposals' device.
        bins: :func:`iou_bins` of these arguments when the caller has them.
        by_bin, bin_offset, by_image: random orders to draw with (:class:`RandomOrder`), made
            here when None: ``by_bin`` must put every binned negative in group ``bin_offset``
            plus its bin group; ``by_image`` groups by image, is independent of ``by_bin`` and
            draws nothing else among the negatives.

    Returns:
        bool (N_all,): the sampled negatives.

    Raises:
        ArgumentError: for K < 1, an unknown binning, or a floor outside its range.
    """
    _check_negative_options(num_bins, binning, bg_iou_thresh, floor_thr, floor_fraction)
    binned, bin_group = bins or iou_bins(
        neg_mask, max_iou, image_index, num_images, num_bins, bg_iou_thresh, binning, floor_thr
    )
    if by_bin is None:
        by_bin, bin_offset = RandomOrder(bin_group, num_images * num_bins, generator), 0
    by_image = by_image or RandomOrder(image_index, num_images, generator)
    neg_expected = num_expected.to(torch.int64)
    if binning == "paper":
        floor_expected = torch.floor(neg_expected * floor_fraction).to(torch.int64)
        if floor_thr < 0:
            floor_expected = torch.zeros_like(neg_expected)
        binned_expected = neg_expected - floor_expected
    else:
        binned_expected = torch.floor(neg_expected * (1.0 - floor_fraction)).to(torch.int64)
    per_bin = torch.div(binned_expected, num_bins, rounding_mode="floor")
    drawn = by_bin.draw(binned, per_bin.repeat_interleave(num_bins), bin_offset)

    def still_wanted(target: torch.Tensor) -> torch.Tensor:
        return (target - count_per_image(drawn, image_index, num_images)).clamp(min=0)

    below_floor = neg_mask & ~binned
    # by_image serves every draw below on sets disjoint from each other's drawn elements; the
    # final fill, after a draw below the floor, needs an order of its own.
    fill_order = by_image
    if binning == "mmdet":
        drawn |= by_image.draw(binned & ~drawn, still_wanted(binned_expected))
        drawn |= by_image.draw(below_floor, still_wanted(neg_expected))
        if floor_fraction == 0:
            # The bins wanted all N and took all they had, the rest came from below the floor:
            # no negative is left while one is wanted.
            return drawn
        fill_order = RandomOrder(image_index, num_images, generator)
    elif floor_thr >= 0:
        drawn |= by_image.draw(below_floor, floor_expected)
        fill_order = RandomOrder(image_index, num_images, generator)
    return drawn | fill_order.draw(neg_mask & ~drawn, still_wanted(neg_expected))



class BalancedRoISampler:
    """Samples the RoIs of a batch for the box head: positives, then negatives to fill.

    Positive candidates are proposals whose label is a class in [0, num_classes), negatives
    those labelled background (``num_classes``); ignored proposals (-1) are never drawn, as
    in Detectron2's ``subsample_labels``. Per image, P = ``int(batch_size_per_image *
    positive_fraction)`` positives are wanted (:func:`instance_balanced_positives`, or a
    uniform draw), and ``batch_size_per_image`` minus the positives drawn negatives
    (:func:`iou_balanced_negatives` or :func:`random_negatives`).

    Args:
        batch_size_per_image: RoIs per image (512 in the paper).
        positive_fraction: share of positives (0.25).
        pos: ``"instance_balanced"`` or ``"random"``.
        neg: ``"iou_balanced"`` or ``"random"``.
        num_bins, binning, floor_thr, floor_fraction, bg_iou_thresh: see
            :func:`iou_balanced_negatives`.

    Raises:
        ArgumentError: for any value out of its range, naming the argument (the
            ``MODEL.LIBRA.SAMPLER`` key when built from a config by ``LibraROIHeads``).
    """

    def __init__(
        self,
        batch_size_per_image: int,
        positive_fraction: float,
        pos: str = "instance_balanced",
        neg: str = "iou_balanced",
        num_bins: int = 3,
        binning: str = "paper",
        floor_thr: float = -1.0,
        floor_fraction: float = 0.0,
        bg_iou_thresh: float = 0.5,
    ):
        self.pos = check_choice("pos", pos, POS_SAMPLERS)
        self.neg = check_choice("neg", neg, NEG_SAMPLERS)
        self.bg_iou_thresh = float(bg_iou_thresh)
        if not math.isfinite(self.bg_iou_thresh) or self.bg_iou_thresh <= 0:
            raise ArgumentError("bg_iou_thresh", f"bg_iou_thresh = {bg_iou_thresh!r} must be positive and finite")
        _check_negative_options(num_bins, binning, self.bg_iou_thresh, float(floor_thr), float(floor_fraction))
        self.num_bins = int(num_bins)
        self.binning = binning
        self.floor_thr = float(floor_thr)
        self.floor_fraction = float(floor_fraction)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    @property
    def num_pos_expected(self) -> int:
        """P: positives wanted per image."""
        return int(self.batch_size_per_image * self.positive_fraction)

    def __call__(
        self,
        gt_classes: torch.Tensor,
        max_iou: torch.Tensor,
        gt_index: torch.Tensor,
        image_index: torch.Tensor,
        num_images: int,
        num_gts: int,
        num_classes: int,
        generator: Optional[torch.Generator] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sample the RoIs of a batch.

        Args:
            gt_classes: int64 (N,): a class in [0, num_classes), ``num_classes`` for
                background or -1 for ignored, per proposal of the whole batch.
            max_iou: float (N,): each proposal's maximum IoU over its image's GT boxes.
            gt_index: int64 (N,): the matched GT box, indexed over the batch's GT boxes.
            image_index: int64 (N,): the image of each proposal, in [0, num_images).
            num_images, num_gts, num_classes: sizes.
            generator: optional generator on the proposals' device.

        Returns:
            (pos_mask, neg_mask): bool (N,) each, disjoint: the sampled positives and
            negatives.
        """
        pos_mask = (gt_classes >= 0) & (gt_classes < num_classes)
        neg_mask = gt_classes == num_classes
        instance_balanced, iou_balanced = self.pos == "instance_balanced", self.neg == "iou_balanced"
        # One order by GT box (positives) and IoU bin (negatives, after the GT boxes), one by
        # image: each serves disjoint positives and negatives (see the module's docstring).
        groups = torch.full_like(gt_index, -1)
        if instance_balanced:
            groups = torch.where(pos_mask, gt_index, groups)
        bins = None
        if iou_balanced:
            bins = iou_bins(neg_mask, max_iou, image_index, num_images, self.num_bins, self.bg_iou_thresh,
                            self.binning, self.floor_thr)  # fmt: skip
            groups = torch.where(bins[1] >= 0, bins[1] + num_gts, groups)
        by_gt_or_bin = None
        if instance_balanced or iou_balanced:
            by_gt_or_bin = RandomOrder(groups, num_gts + (num_images * self.num_bins if iou_balanced else 0), generator)
        by_image = RandomOrder(image_index, num_images, generator)

        num_pos = self.num_pos_expected
        if instance_balanced:
            pos = instance_balanced_positives(pos_mask, gt_index, image_index, num_images, num_gts, num_pos,
                                              by_gt=by_gt_or_bin, by_image=by_image)  # fmt: skip
        else:
            pos = by_image.draw(pos_mask, torch.full((num_images,), num_pos, dtype=torch.int64, device=pos_mask.device))
        num_neg = self.batch_size_per_image - count_per_image(pos, image_index, num_images)
        if not iou_balanced:
            return pos, random_negatives(neg_mask, image_index, num_images, num_neg, by_image=by_image)
        neg = iou_balanced_negatives(
            neg_mask, max_iou, image_index, num_images, num_neg, self.num_bins, self.bg_iou_thresh, self.binning,
            self.floor_thr, self.floor_fraction, generator,
            bins=bins, by_bin=by_gt_or_bin, bin_offset=num_gts, by_image=by_image,
        )  # fmt: skip
        return pos, neg
