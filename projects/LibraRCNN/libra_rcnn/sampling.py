"""IoU-balanced negative and instance-balanced positive sampling of RoIs.

Libra R-CNN §3.1, Eq. 1–2; METHODS.md §2.

Every function here works on the proposals of a whole batch at once, flattened into one
dimension with an ``image_index`` per proposal, and returns boolean masks. Draws are made
without replacement by ranking the candidates inside groups (one group per IoU bin, GT box or
image) in a random order, so there is no Python loop over boxes and no host-device
synchronisation: the quotas stay tensors on the proposals' device from start to end.

A random order costs a sort of the whole batch, the bulk of the sampler's time; one order
serves several draws where that leaves each draw uniform: draws on disjoint candidate sets
(positives and negatives, IoU bins and the negatives below the floor), or draws of which
at most one takes anything in each image. :class:`BalancedRoISampler` thus sorts twice per
batch (three times with a floor), where drawing each step with its own order sorted five times.
"""
import math
from typing import Optional, Tuple

import torch

from .config import BINNINGS, NEG_SAMPLERS, POS_SAMPLERS, check_choice, check_range

__all__ = [
    "sample_within_groups",
    "random_positives",
    "instance_balanced_positives",
    "random_negatives",
    "iou_balanced_negatives",
    "BalancedRoISampler",
]


class _RandomOrder:
    """A uniformly random order of the elements inside each of ``num_groups`` groups.

    Args:
        groups: int64 (N,): the group of each element in [0, num_groups), or -1 for none.
        num_groups: G.
        generator: optional ``torch.Generator`` on the device of ``groups``.
    """

    def __init__(self, groups: torch.Tensor, num_groups: int, generator: Optional[torch.Generator]):
        device = groups.device
        self.num_groups = num_groups
        group = torch.where(groups >= 0, groups, num_groups)
        # Shuffle, then sort by group alone. Whatever order a sort gives equal keys depends
        # only on the sequence of keys, and the shuffle places each group's members on that
        # group's positions uniformly at random: every order inside every group is equally
        # likely. (Sorting integer keys with few distinct values is much cheaper than sorting
        # random floats.)
        perm = torch.randperm(groups.numel(), generator=generator, device=device)
        self.sorted_group, order = torch.sort(group.index_select(0, perm))
        self.order = perm.index_select(0, order)
        # (scatter_add_ rather than bincount, which reads the largest value back to the host on a GPU)
        sizes = torch.zeros(num_groups + 1, dtype=torch.int64, device=device)
        sizes.scatter_add_(0, group, torch.ones_like(group))
        # Position (in sorted order) of the first element of each element's group.
        self.group_start = (torch.cumsum(sizes, 0) - sizes).index_select(0, self.sorted_group)

    def draw(self, candidates: torch.Tensor, quotas: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """In every group ``offset + j``, the first ``quotas[j]`` candidates in this order.

        That is ``min(quotas[j], #candidates)`` of the group's candidates, every subset of that
        size equally likely; groups outside ``[offset, offset + len(quotas))`` give none.

        Args:
            candidates: bool (N,).
            quotas: integer (Q,); negative values count as 0.
            offset: group of ``quotas[0]``.

        Returns:
            bool (N,): the drawn elements.
        """
        # index_select and scatter_ rather than indexing with [], several times faster on the CPU.
        picked = candidates.index_select(0, self.order)
        before = torch.cumsum(picked, 0) - picked.to(torch.int64)  # candidates before, in order
        rank = before - before.index_select(0, self.group_start)  # ... and in the same group
        limit = torch.zeros(self.num_groups + 1, dtype=torch.int64, device=candidates.device)
        limit[offset : offset + quotas.numel()] = quotas
        drawn = picked & (rank < limit.index_select(0, self.sorted_group))
        return torch.empty_like(drawn).scatter_(0, self.order, drawn)


def sample_within_groups(
    groups: torch.Tensor, quotas: torch.Tensor, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Draw ``min(quotas[g], size of group g)`` members of every group g, uniformly at random.

    Args:
        groups: int64 tensor of shape (N,): the group of each element in [0, G), or -1 for
            an element that is not a candidate.
        quotas: integer tensor of shape (G,): how many members to draw from each group
            (negative values count as 0).
        generator: optional ``torch.Generator`` on the device of ``groups``; the default
            generator of that device when None.

    Returns:
        bool tensor of shape (N,): True for the drawn elements. Drawn without replacement:
        every subset of the wanted size of a group is equally likely.
    """
    return _RandomOrder(groups, quotas.numel(), generator).draw(groups >= 0, quotas)


def _count_per_image(mask: torch.Tensor, image_index: torch.Tensor, num_images: int) -> torch.Tensor:
    """int64 (num_images,): number of True elements of ``mask`` in each image."""
    counts = torch.zeros(num_images, dtype=torch.int64, device=mask.device)
    return counts.scatter_add_(0, image_index, mask.to(torch.int64))


def random_positives(
    pos_mask: torch.Tensor,
    image_index: torch.Tensor,
    num_images: int,
    num_expected: int,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Detectron2's random positive sampling: ``min(num_expected, #positives)`` per image.

    Args:
        pos_mask: bool (N,), the positive candidates.
        image_index: int64 (N,), the image of each proposal in [0, num_images).
        num_images: number of images in the batch.
        num_expected: P, positives wanted per image.
        generator: optional generator on the proposals' device.

    Returns:
        bool (N,): the sampled positives.
    """
    quotas = torch.full((num_images,), num_expected, dtype=torch.int64, device=pos_mask.device)
    return _RandomOrder(image_index, num_images, generator).draw(pos_mask, quotas)


def instance_balanced_positives(
    pos_mask: torch.Tensor,
    gt_index: torch.Tensor,
    image_index: torch.Tensor,
    num_images: int,
    num_gts: int,
    num_expected: int,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Instance-balanced positive sampling (METHODS.md §2, the reference configuration).

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

    Returns:
        bool (N,): the sampled positives; exactly ``min(P, #candidates)`` per image.
    """
    by_gt = _RandomOrder(torch.where(pos_mask, gt_index, torch.full_like(gt_index, -1)), num_gts, generator)
    by_image = _RandomOrder(image_index, num_images, generator)
    return _instance_balanced(pos_mask, gt_index, image_index, num_images, num_gts, num_expected, by_gt, by_image)


def _instance_balanced(
    pos_mask: torch.Tensor,
    gt_index: torch.Tensor,
    image_index: torch.Tensor,
    num_images: int,
    num_gts: int,
    num_expected: int,
    by_gt: _RandomOrder,
    by_image: _RandomOrder,
) -> torch.Tensor:
    """:func:`instance_balanced_positives` with given orders: ``by_gt`` puts every positive in
    group ``gt_index``; ``by_image`` groups by image and is independent of ``by_gt``."""
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

    num_candidates = _count_per_image(pos_mask, image_index, num_images)
    per_gt = torch.round(num_expected / num_distinct.clamp(min=1).to(torch.float64)).to(torch.int64) + 1
    # An image with at most P candidates takes them all.
    per_gt = torch.where(num_candidates <= num_expected, num_candidates, per_gt)
    drawn = by_gt.draw(pos_mask, per_gt.index_select(0, gt_image))
    num_drawn = _count_per_image(drawn, image_index, num_images)
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
) -> torch.Tensor:
    """Random negative sampling (METHODS.md §2, p = N / M).

    Args:
        neg_mask: bool (N,), the negative candidates.
        image_index: int64 (N,), the image of each proposal.
        num_images: images in the batch.
        num_expected: int64 (num_images,), negatives wanted per image.
        generator: optional generator on the proposals' device.

    Returns:
        bool (N,): the sampled negatives, ``min(num_expected[i], #candidates)`` per image.
    """
    return _RandomOrder(image_index, num_images, generator).draw(neg_mask, num_expected)


def _check_negative_options(num_bins: int, binning: str, bg_iou_thresh: float, floor_thr: float, floor_fraction: float):
    check_range("num_bins", num_bins, 1)
    check_choice("binning", binning, BINNINGS)
    check_range("floor_fraction", floor_fraction, 0.0, 1.0)
    check_range("floor_thr", floor_thr, -1.0, bg_iou_thresh, high_open=True)
    if 0 > floor_thr > -1:
        raise ValueError(f"floor_thr = {floor_thr} must be -1 (off) or in [0, {bg_iou_thresh})")


def _iou_bins(
    neg_mask: torch.Tensor,
    max_iou: torch.Tensor,
    image_index: torch.Tensor,
    num_images: int,
    num_bins: int,
    bg_iou_thresh: float,
    binning: str,
    floor_thr: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The negatives above the floor (``binned``, bool (N,)) and the IoU bin of each as a group
    ``image * num_bins + bin`` (int64 (N,), -1 outside every bin); see
    :func:`iou_balanced_negatives`."""
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
) -> torch.Tensor:
    """IoU-balanced negative sampling (Libra R-CNN §3.1, Eq. 2; METHODS.md §2).

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

    Returns:
        bool (N_all,): the sampled negatives.

    Raises:
        ValueError: for K < 1, an unknown binning, or a floor outside its range.
    """
    _check_negative_options(num_bins, binning, bg_iou_thresh, floor_thr, floor_fraction)
    binned, bin_group = _iou_bins(
        neg_mask, max_iou, image_index, num_images, num_bins, bg_iou_thresh, binning, floor_thr
    )
    by_bin = _RandomOrder(bin_group, num_images * num_bins, generator)
    by_image = _RandomOrder(image_index, num_images, generator)
    return _iou_balanced(
        neg_mask, image_index, num_images, num_expected, binned, by_bin, 0, by_image,
        num_bins, binning, floor_thr, floor_fraction, generator,
    )  # fmt: skip


def _iou_balanced(
    neg_mask: torch.Tensor,
    image_index: torch.Tensor,
    num_images: int,
    num_expected: torch.Tensor,
    binned: torch.Tensor,
    by_bin: _RandomOrder,
    bin_offset: int,
    by_image: _RandomOrder,
    num_bins: int,
    binning: str,
    floor_thr: float,
    floor_fraction: float,
    generator: Optional[torch.Generator],
) -> torch.Tensor:
    """:func:`iou_balanced_negatives` with given orders: ``by_bin`` puts every negative of
    IoU bin ``image * num_bins + bin`` in group ``bin_offset`` plus that; ``by_image`` groups
    by image, is independent of ``by_bin`` and draws nothing else among the negatives."""
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
        return (target - _count_per_image(drawn, image_index, num_images)).clamp(min=0)

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
        fill_order = _RandomOrder(image_index, num_images, generator)
    elif floor_thr >= 0:
        drawn |= by_image.draw(below_floor, floor_expected)
        fill_order = _RandomOrder(image_index, num_images, generator)
    return drawn | fill_order.draw(neg_mask & ~drawn, still_wanted(neg_expected))


class BalancedRoISampler:
    """Samples the RoIs of a batch for the box head: positives, then negatives to fill.

    Positive candidates are proposals whose label is a class in [0, num_classes), negatives
    those labelled background (``num_classes``); ignored proposals (-1) are never drawn, as
    in Detectron2's ``subsample_labels``. Per image, P = ``int(batch_size_per_image *
    positive_fraction)`` positives are wanted and ``batch_size_per_image`` minus the
    positives drawn negatives.

    Args:
        batch_size_per_image: RoIs per image (512 in the paper).
        positive_fraction: share of positives (0.25).
        pos: ``"instance_balanced"`` or ``"random"``.
        neg: ``"iou_balanced"`` or ``"random"``.
        num_bins, binning, floor_thr, floor_fraction, bg_iou_thresh: see
            :func:`iou_balanced_negatives`.
        key_prefix: config key named in error messages.

    Raises:
        ValueError: for any value out of its range, naming ``key_prefix`` + the key.
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
        key_prefix: str = "MODEL.LIBRA.SAMPLER.",
    ):
        self.pos = check_choice(key_prefix + "POS", pos, POS_SAMPLERS)
        self.neg = check_choice(key_prefix + "NEG", neg, NEG_SAMPLERS)
        self.num_bins = check_range(key_prefix + "NUM_BINS", int(num_bins), 1)
        if num_bins != int(num_bins):
            raise ValueError(f"{key_prefix}NUM_BINS = {num_bins!r} must be an integer >= 1")
        self.binning = check_choice(key_prefix + "BINNING", binning, BINNINGS)
        self.floor_fraction = check_range(key_prefix + "FLOOR_FRACTION", float(floor_fraction), 0.0, 1.0)
        self.floor_thr = float(floor_thr)
        if not (self.floor_thr == -1.0 or 0.0 <= self.floor_thr < bg_iou_thresh):
            raise ValueError(
                f"{key_prefix}FLOOR_THR = {floor_thr!r} must be -1 (off) or lie in [0, {bg_iou_thresh}) "
                "(below the background IoU threshold MODEL.ROI_HEADS.IOU_THRESHOLDS[0])"
            )
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.bg_iou_thresh = float(bg_iou_thresh)
        if not math.isfinite(self.bg_iou_thresh) or self.bg_iou_thresh <= 0:
            raise ValueError(f"background IoU threshold {bg_iou_thresh!r} must be positive and finite")

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
        num_pos = self.num_pos_expected
        # One order by GT box (positives) and IoU bin (negatives), one by image: each serves
        # disjoint positives and negatives (see the module's docstring).
        groups = torch.full_like(gt_index, -1)
        if self.pos == "instance_balanced":
            groups = torch.where(pos_mask, gt_index, groups)
        if self.neg == "iou_balanced":
            binned, bin_group = _iou_bins(
                neg_mask, max_iou, image_index, num_images, self.num_bins, self.bg_iou_thresh,
                self.binning, self.floor_thr,
            )  # fmt: skip
            groups = torch.where(bin_group >= 0, bin_group + num_gts, groups)
            by_gt_or_bin = _RandomOrder(groups, num_gts + num_images * self.num_bins, generator)
        elif self.pos == "instance_balanced":
            by_gt_or_bin = _RandomOrder(groups, num_gts, generator)
        by_image = _RandomOrder(image_index, num_images, generator)

        if self.pos == "instance_balanced":
            pos = _instance_balanced(
                pos_mask, gt_index, image_index, num_images, num_gts, num_pos, by_gt_or_bin, by_image
            )
        else:
            pos = by_image.draw(pos_mask, torch.full((num_images,), num_pos, dtype=torch.int64, device=pos_mask.device))
        num_neg = self.batch_size_per_image - _count_per_image(pos, image_index, num_images)
        if self.neg == "iou_balanced":
            neg = _iou_balanced(
                neg_mask, image_index, num_images, num_neg, binned, by_gt_or_bin, num_gts, by_image,
                self.num_bins, self.binning, self.floor_thr, self.floor_fraction, generator,
            )  # fmt: skip
        else:
            neg = by_image.draw(neg_mask, num_neg)
        return pos, neg
