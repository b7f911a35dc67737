"""``MODEL.LIBRA.SAMPLER.BINNING: mmdet`` draws the negatives' IoU bins as mmdetection's own
``IoUBalancedNegSampler`` does (docs/methods.md#iou-balanced-sampling), on the same proposals, over many seeds.

The two samplers draw with different random streams, so they are compared by the distribution of
what they draw: the mean number of sampled negatives in each IoU range over 200 seeds, which the
bins' quotas and the uniform fills fix. Both are given the same number of negatives to draw.
"""
import pytest
import torch

from libra_rcnn import BalancedRoISampler

from mmdet_reference import mmdet_env  # noqa: F401 (fixture)

NUM_CLASSES = 10
SEEDS = range(200)
# IoU ranges to count: zero (below mmdetection's floor), and around the bins of [0, max IoU = 0.9):
# [0, 0.3), [0.3, 0.6), [0.6, 0.9), the last holding no negative (IoU < 0.5).
RANGES = [(0.0, 0.0), (1e-6, 0.3), (0.3, 0.5)]


def one_image(num_zero: int, num_low: int, num_high: int, num_pos: int = 200):
    """Labels, max IoU and matched GT box of one image's proposals: positives at IoU 0.5-0.9 (the
    image's max IoU 0.9), then negatives at IoU 0, in (0, 0.3) and in [0.3, 0.5)."""
    pos_iou = torch.linspace(0.5, 0.9, num_pos)
    low = torch.linspace(0.01, 0.29, num_low)
    high = torch.linspace(0.3, 0.49, num_high)
    iou = torch.cat([pos_iou, torch.zeros(num_zero), low, high])
    classes = torch.cat([torch.arange(num_pos) % NUM_CLASSES, torch.full((num_zero + num_low + num_high,), NUM_CLASSES)])
    gt_index = torch.cat([torch.arange(num_pos) % 4, torch.zeros(num_zero + num_low + num_high, dtype=torch.int64)])
    return classes, iou, gt_index


def counts(mask: torch.Tensor, iou: torch.Tensor) -> list:
    return [int((mask & (iou >= a) & (iou <= b if a == b else iou < b)).sum()) for a, b in RANGES]


def ours(classes, iou, gt_index, seed: int) -> list:
    sampler = BalancedRoISampler(512, 0.25, pos="random", neg="iou_balanced", binning="mmdet")
    image = torch.zeros(len(iou), dtype=torch.int64)
    pos, neg = sampler(classes, iou, gt_index, image, 1, 4, NUM_CLASSES, generator=torch.Generator().manual_seed(seed))
    assert int(pos.sum()) == 128 and int(neg.sum()) == 384
    return counts(neg, iou)


def theirs(classes, iou, seed: int) -> list:
    from mmdet.models.task_modules.assigners import AssignResult
    from mmdet.models.task_modules.samplers import IoUBalancedNegSampler

    sampler = IoUBalancedNegSampler(num=512, pos_fraction=0.25, floor_thr=-1, floor_fraction=0, num_bins=3)
    positive = classes < NUM_CLASSES
    result = AssignResult(4, torch.where(positive, torch.ones_like(classes), torch.zeros_like(classes)), iou,
                          torch.where(positive, classes, torch.full_like(classes, -1)))  # fmt: skip
    torch.manual_seed(seed)  # mmdetection draws with torch.randperm
    sampler._sample_neg(result, 384)  # the first call switches floor_thr -1 to 0, as in training
    drawn = torch.zeros(len(iou), dtype=torch.bool)
    drawn[torch.as_tensor(sampler._sample_neg(result, 384), dtype=torch.int64)] = True
    assert int(drawn.sum()) == 384
    return counts(drawn, iou)


@pytest.mark.parametrize(
    "image,expected",
    [
        # Both bins full: 128 each, the 128 missing (the top bin is empty) drawn uniformly from the
        # 472 + 72 binned negatives left; none at IoU 0.
        ((1500, 600, 200), [0, 128 + 128 * 472 / 544, 128 + 128 * 72 / 544]),
        # Few overlapping negatives: all 150 of them, the rest from IoU 0.
        ((1500, 100, 50), [234, 100, 50]),
    ],
)
def test_mmdet_binning_draws_the_bins_as_mmdetection(mmdet_env, image, expected):  # noqa: F811
    classes, iou, gt_index = one_image(*image)
    mean_ours = torch.tensor([ours(classes, iou, gt_index, s) for s in SEEDS], dtype=torch.float64).mean(0)
    mean_theirs = torch.tensor([theirs(classes, iou, s) for s in SEEDS], dtype=torch.float64).mean(0)
    # The per-draw spread of a range's count is at most sqrt(128 / 4) ~ 5.7: its mean over 200
    # seeds is known to 0.4; 1.5 is beyond four of those.
    assert mean_ours.tolist() == pytest.approx(expected, abs=1.5)
    assert mean_theirs.tolist() == pytest.approx(expected, abs=1.5)
    assert (mean_ours - mean_theirs).abs().max() < 1.5
