"""IoU-balanced and instance-balanced sampling (docs/methods.md#iou-balanced-sampling), checked with fixed seeds."""
import pytest
import torch
from detectron2.modeling import build_model

from libra_rcnn import (
    BalancedRoISampler,
    instance_balanced_positives,
    iou_balanced_negatives,
    random_negatives,
    sample_within_groups,
)

from conftest import load_cfg


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def one_image(n):
    return torch.zeros(n, dtype=torch.int64)


def negatives_with_ious(*groups):
    """max IoU per proposal: ``groups`` of (count, low, high), IoUs spread evenly in [low, high)."""
    parts = [low + (high - low) * torch.arange(count, dtype=torch.float32) / count for count, low, high in groups]
    return torch.cat(parts)


def count_in(mask, iou, low, high):
    return int((mask & (iou >= low) & (iou < high)).sum())


# ----------------------------------------------------------------------------- groups


def test_sample_within_groups_quotas_are_exact():
    groups = torch.tensor([0] * 10 + [1] * 3 + [-1] * 5 + [2] * 7)
    drawn = sample_within_groups(groups, torch.tensor([4, 5, 0]), gen())
    assert int(drawn[groups == 0].sum()) == 4
    assert int(drawn[groups == 1].sum()) == 3  # fewer than the quota: all of them
    assert int(drawn[groups == 2].sum()) == 0
    assert not drawn[groups == -1].any()


def test_sample_within_groups_is_uniform():
    groups = torch.tensor([0] * 20 + [1] * 5)
    freq = torch.zeros(25)
    trials = 4000
    g = gen(1)
    for _ in range(trials):
        freq += sample_within_groups(groups, torch.tensor([5, 2]), g).float()
    freq /= trials
    # Each member of group 0 is drawn with p = 5/20, of group 1 with p = 2/5 (±4 sigma).
    assert torch.allclose(freq[:20], torch.full((20,), 0.25), atol=4 * (0.25 * 0.75 / trials) ** 0.5)
    assert torch.allclose(freq[20:], torch.full((5,), 0.4), atol=4 * (0.4 * 0.6 / trials) ** 0.5)


def test_sample_within_groups_empty():
    assert sample_within_groups(torch.zeros(0, dtype=torch.int64), torch.tensor([3])).numel() == 0


# ----------------------------------------------------------------------------- negatives, paper


def test_paper_bins_exact_quotas_when_full():
    # Bins of [0, 0.5) with K = 3: [0, 1/6), [1/6, 1/3), [1/3, 1/2).
    iou = negatives_with_ious((300, 0.0, 1 / 6), (200, 1 / 6, 1 / 3), (100, 1 / 3, 0.5))
    neg = torch.ones_like(iou, dtype=torch.bool)
    drawn = iou_balanced_negatives(neg, iou, one_image(len(iou)), 1, torch.tensor([90]), generator=gen())
    assert int(drawn.sum()) == 90
    assert [count_in(drawn, iou, a, b) for a, b in [(0, 1 / 6), (1 / 6, 1 / 3), (1 / 3, 0.5)]] == [30, 30, 30]


def test_paper_bins_shortfall_is_filled_from_the_rest():
    iou = negatives_with_ious((300, 0.0, 1 / 6), (200, 1 / 6, 1 / 3), (10, 1 / 3, 0.5))
    neg = torch.ones_like(iou, dtype=torch.bool)
    counts = torch.zeros(3)
    g = gen(2)
    for _ in range(200):
        drawn = iou_balanced_negatives(neg, iou, one_image(len(iou)), 1, torch.tensor([90]), generator=g)
        assert int(drawn.sum()) == 90
        assert count_in(drawn, iou, 1 / 3, 0.5) == 10  # the short bin gives all it has
        counts += torch.tensor([count_in(drawn, iou, 0, 1 / 6), count_in(drawn, iou, 1 / 6, 1 / 3), 10.0])
    # The 20 missing are drawn uniformly from the 300 + 200 - 60 not yet picked: 270 : 170.
    mean = counts / 200
    assert mean[0] == pytest.approx(30 + 20 * 270 / 440, abs=0.5)
    assert mean[1] == pytest.approx(30 + 20 * 170 / 440, abs=0.5)


def test_too_few_negatives_are_all_taken():
    iou = negatives_with_ious((20, 0.0, 0.5))
    neg = torch.ones_like(iou, dtype=torch.bool)
    neg[:5] = False  # not negatives (e.g. positives or ignored)
    for binning in ("paper", "mmdet"):
        drawn = iou_balanced_negatives(neg, iou, one_image(20), 1, torch.tensor([384]), binning=binning, generator=gen())
        assert torch.equal(drawn, neg)


def test_paper_floor_options():
    # floor_thr = 0.1, floor_fraction = 0.5: 50 of 100 from IoU < 0.1, the other 50 binned
    # over [0.1, 0.5) in bins of width 0.1333: 16 each, then 2 more filled at random.
    iou = negatives_with_ious((400, 0.0, 0.1), (300, 0.1, 0.5))
    neg = torch.ones_like(iou, dtype=torch.bool)
    drawn = iou_balanced_negatives(
        neg, iou, one_image(len(iou)), 1, torch.tensor([100]), floor_thr=0.1, floor_fraction=0.5, generator=gen()
    )
    assert int(drawn.sum()) == 100
    assert count_in(drawn, iou, 0.0, 0.1) >= 50
    width = 0.4 / 3
    per_bin = [count_in(drawn, iou, 0.1 + k * width, 0.1 + (k + 1) * width) for k in range(3)]
    assert all(c >= 16 for c in per_bin)
    assert sum(per_bin) + count_in(drawn, iou, 0.0, 0.1) == 100


# ----------------------------------------------------------------------------- negatives, mmdet


def test_mmdet_binning_skips_zero_iou_while_enough_overlap():
    # Bins span [0, max IoU = 1): [0, 1/3), [1/3, 2/3), [2/3, 1); the top bin is empty.
    iou = torch.cat([negatives_with_ious((500, 0.0, 0.0), (100, 0.01, 1 / 3), (100, 1 / 3, 0.5)), torch.ones(1)])
    neg = torch.ones_like(iou, dtype=torch.bool)
    neg[-1] = False  # a GT box added as a proposal: positive, IoU 1
    drawn = iou_balanced_negatives(neg, iou, one_image(len(iou)), 1, torch.tensor([90]), binning="mmdet", generator=gen())
    assert int(drawn.sum()) == 90
    assert int((drawn & (iou == 0)).sum()) == 0
    assert count_in(drawn, iou, 1 / 3, 0.5) >= 30
    assert count_in(drawn, iou, 0.01, 1 / 3) >= 30
    # The paper's bins over [0, 0.5) take a third from the lowest bin, zero-IoU ones included.
    paper = iou_balanced_negatives(neg, iou, one_image(len(iou)), 1, torch.tensor([90]), generator=gen())
    assert int((paper & (iou == 0)).sum()) > 0


def test_mmdet_binning_fills_with_zero_iou_when_overlap_is_short():
    iou = torch.cat([negatives_with_ious((500, 0.0, 0.0), (40, 0.05, 0.45)), torch.ones(1)])
    neg = torch.ones_like(iou, dtype=torch.bool)
    neg[-1] = False
    drawn = iou_balanced_negatives(neg, iou, one_image(len(iou)), 1, torch.tensor([90]), binning="mmdet", generator=gen())
    assert int((drawn & (iou > 0)).sum()) == 40
    assert int((drawn & (iou == 0)).sum()) == 50


def test_mmdet_positive_floor():
    # floor_thr = 0.1, floor_fraction = 0.25: 75 binned from IoU >= 0.1, 25 from below.
    iou = torch.cat([negatives_with_ious((300, 0.0, 0.1), (300, 0.1, 0.5)), torch.ones(1)])
    neg = torch.ones_like(iou, dtype=torch.bool)
    neg[-1] = False
    drawn = iou_balanced_negatives(
        neg, iou, one_image(len(iou)), 1, torch.tensor([100]), binning="mmdet",
        floor_thr=0.1, floor_fraction=0.25, generator=gen(),
    )
    assert count_in(drawn, iou, 0.1, 0.5) == 75
    assert count_in(drawn, iou, 0.0, 0.1) == 25


def test_negatives_of_a_batch_are_sampled_per_image():
    iou = torch.cat([negatives_with_ious((90, 0.0, 0.5)), negatives_with_ious((30, 0.0, 0.5))])
    image = torch.cat([torch.zeros(90, dtype=torch.int64), torch.ones(30, dtype=torch.int64)])
    neg = torch.ones_like(iou, dtype=torch.bool)
    drawn = iou_balanced_negatives(neg, iou, image, 2, torch.tensor([30, 60]), generator=gen())
    assert int(drawn[:90].sum()) == 30
    assert [count_in(drawn[:90], iou[:90], a, b) for a, b in [(0, 1 / 6), (1 / 6, 1 / 3), (1 / 3, 0.5)]] == [10] * 3
    assert int(drawn[90:].sum()) == 30  # all 30 of a short image


def test_random_negatives_count():
    neg = torch.rand(1000, generator=gen(4)) < 0.7
    drawn = random_negatives(neg, one_image(1000), 1, torch.tensor([100]), gen())
    assert int(drawn.sum()) == 100 and not (drawn & ~neg).any()


@pytest.mark.parametrize(
    "kwargs,match",
    [({"num_bins": 0}, "num_bins"), ({"binning": "x"}, "binning"), ({"floor_fraction": 1.5}, "floor_fraction"),
     ({"floor_thr": 0.7}, "floor_thr"), ({"floor_thr": -0.5}, "floor_thr")],
)
def test_bad_negative_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        iou_balanced_negatives(torch.ones(3, dtype=torch.bool), torch.zeros(3), one_image(3), 1, torch.tensor([2]), **kwargs)


# ----------------------------------------------------------------------------- positives


def positives_for(counts):
    """Positive candidates of one image: ``counts[g]`` proposals matched to GT box g."""
    gt = torch.cat([torch.full((c,), g, dtype=torch.int64) for g, c in enumerate(counts)])
    return torch.ones(len(gt), dtype=torch.bool), gt


def test_instance_balanced_cap_per_gt_and_exact_total():
    # P = 64, G = 3: at most round(64 / 3) + 1 = 22 per GT before the final subsampling.
    pos, gt = positives_for([100, 100, 100])
    g = gen(5)
    for _ in range(50):
        drawn = instance_balanced_positives(pos, gt, one_image(len(gt)), 1, 3, 64, g)
        per_gt = torch.bincount(gt[drawn], minlength=3)
        assert int(drawn.sum()) == 64
        assert int(per_gt.max()) <= 22


def test_instance_balanced_cap_uses_round_half_even():
    # P = 10, G = 4: round(2.5) + 1 = 3 (2.5 rounds to 2, as in Python).
    pos, gt = positives_for([9, 9, 9, 9])
    drawn = instance_balanced_positives(pos, gt, one_image(len(gt)), 1, 4, 10, gen())
    per_gt = torch.bincount(gt[drawn], minlength=4)
    assert int(drawn.sum()) == 10 and int(per_gt.max()) <= 3


def test_instance_balanced_shortfall_filled_from_unused():
    # P = 64, caps of 22: GT 1 and 2 give all (10 and 5), GT 0 gives 22, then 27 more from GT 0.
    pos, gt = positives_for([100, 10, 5])
    drawn = instance_balanced_positives(pos, gt, one_image(len(gt)), 1, 3, 64, gen())
    assert torch.bincount(gt[drawn], minlength=3).tolist() == [49, 10, 5]


def test_instance_balanced_all_taken_when_too_few():
    pos, gt = positives_for([30, 20])
    pos[::7] = False
    drawn = instance_balanced_positives(pos, gt, one_image(len(gt)), 1, 2, 64, gen())
    assert torch.equal(drawn, pos)


def test_instance_balanced_is_balanced_against_random():
    # One large object with many positives and one small with few: balance raises the small one's share.
    pos, gt = positives_for([400, 30])
    drawn = instance_balanced_positives(pos, gt, one_image(len(gt)), 1, 2, 64, gen())
    assert int((gt[drawn] == 1).sum()) == 30  # cap 33 > 30: all of the small object's


# ----------------------------------------------------------------------------- the sampler


def sampler(**kwargs):
    return BalancedRoISampler(batch_size_per_image=512, positive_fraction=0.25, **kwargs)


def test_sampler_image_without_gt_and_few_proposals():
    # Image 0: 2000 background proposals, no GT. Image 1: 300 proposals in all (fewer than
    # 512): 10 ignored, 40 positives, 250 negatives.
    num_classes = 10
    second = torch.cat([torch.full((10,), -1), torch.randint(0, num_classes, (40,)), torch.full((250,), num_classes)])
    classes = torch.cat([torch.full((2000,), num_classes), second])
    iou = torch.cat([torch.zeros(2000), torch.rand(300) * 0.9])
    image = torch.cat([torch.zeros(2000, dtype=torch.int64), torch.ones(300, dtype=torch.int64)])
    gt_index = torch.cat([torch.zeros(2000, dtype=torch.int64), torch.randint(0, 4, (300,))])
    pos, neg = sampler()(classes, iou, gt_index, image, 2, 4, num_classes, generator=gen())
    assert not (pos & neg).any()
    assert int(pos[:2000].sum()) == 0 and int(neg[:2000].sum()) == 512
    assert int(pos[2000:].sum()) == 40 and int(neg[2000:].sum()) == 250  # all usable proposals
    assert not (pos | neg)[2000:2010].any()


def test_sampler_counts_with_plenty_of_both():
    classes = torch.cat([torch.randint(0, 10, (400,)), torch.full((1600,), 10)])
    iou = torch.cat([0.5 + torch.rand(400) * 0.5, torch.rand(1600) * 0.5])
    gt_index = torch.randint(0, 5, (2000,))
    for kwargs in ({}, {"binning": "mmdet"}, {"pos": "random", "neg": "random"}):
        pos, neg = sampler(**kwargs)(classes, iou, gt_index, one_image(2000), 1, 5, 10, generator=gen())
        assert int(pos.sum()) == 128 and int(neg.sum()) == 384


def batch_of(*images):
    """The sampler's inputs for a batch: per image, (positives per GT box, negative IoU groups)."""
    classes, iou, gt_index, image_index, num_gts = [], [], [], [], 0
    for i, (pos_counts, neg_groups) in enumerate(images):
        _, gt = positives_for(pos_counts)
        neg_iou = negatives_with_ious(*neg_groups)
        classes += [gt % 10, torch.full((len(neg_iou),), 10)]
        iou += [0.5 + 0.4 * torch.rand(len(gt), generator=gen(i)), neg_iou]
        gt_index += [gt + num_gts, torch.zeros(len(neg_iou), dtype=torch.int64)]
        image_index.append(torch.full((len(gt) + len(neg_iou),), i))
        num_gts += len(pos_counts)
    return torch.cat(classes), torch.cat(iou), torch.cat(gt_index), torch.cat(image_index), len(images), num_gts


def test_sampler_takes_each_images_per_bin_quotas_as_training_runs_it():
    # 120 RoIs per image, 25 % positives: 30 positives and 90 negatives, 30 per paper bin of
    # [0, 1/6), [1/6, 1/3), [1/3, 1/2). Image 0 has every bin full; image 1 has 12 negatives in
    # the top bin (all taken), and its 18 missing are filled from the other two bins.
    bins = [(0, 1 / 6), (1 / 6, 1 / 3), (1 / 3, 0.5)]
    classes, iou, gt_index, image_index, num_images, num_gts = batch_of(
        ([20, 20], ((300, 0.0, 1 / 6), (200, 1 / 6, 1 / 3), (100, 1 / 3, 0.5))),
        ([25, 5], ((300, 0.0, 1 / 6), (200, 1 / 6, 1 / 3), (12, 1 / 3, 0.5))),
    )
    small = BalancedRoISampler(batch_size_per_image=120, positive_fraction=0.25)
    fill = torch.zeros(2)
    for seed in range(100):
        pos, neg = small(classes, iou, gt_index, image_index, num_images, num_gts, 10, generator=gen(seed))
        first, second = image_index == 0, image_index == 1
        assert int((pos & first).sum()) == 30 and int((pos & second).sum()) == 30
        assert [count_in(neg & first, iou, a, b) for a, b in bins] == [30, 30, 30]
        per_bin = [count_in(neg & second, iou, a, b) for a, b in bins]
        assert per_bin[2] == 12 and min(per_bin[:2]) >= 30 and sum(per_bin) == 90
        fill += torch.tensor(per_bin[:2], dtype=torch.float32) - 30
        # Instance-balanced positives: image 1's small object (5 positives) gives all of them.
        assert int((pos & second & (gt_index == num_gts - 1)).sum()) == 5
    # The 18 filled uniformly from the 270 + 170 negatives of the two lower bins not yet drawn.
    assert (fill / 100).tolist() == pytest.approx([18 * 270 / 440, 18 * 170 / 440], abs=0.6)


def test_sampler_is_reproducible_with_a_generator():
    classes = torch.cat([torch.randint(0, 10, (400,)), torch.full((1600,), 10)])
    iou = torch.cat([0.5 + torch.rand(400) * 0.5, torch.rand(1600) * 0.5])
    gt_index = torch.randint(0, 5, (2000,))
    a = sampler()(classes, iou, gt_index, one_image(2000), 1, 5, 10, generator=gen(9))
    b = sampler()(classes, iou, gt_index, one_image(2000), 1, 5, 10, generator=gen(9))
    c = sampler()(classes, iou, gt_index, one_image(2000), 1, 5, 10, generator=gen(10))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize(
    "kwargs,key",
    [({"pos": "x"}, "MODEL.LIBRA.SAMPLER.POS"), ({"neg": "x"}, "MODEL.LIBRA.SAMPLER.NEG"),
     ({"num_bins": 0}, "MODEL.LIBRA.SAMPLER.NUM_BINS"), ({"binning": "x"}, "MODEL.LIBRA.SAMPLER.BINNING"),
     ({"floor_thr": 0.6}, "MODEL.LIBRA.SAMPLER.FLOOR_THR"),
     ({"floor_fraction": -0.1}, "MODEL.LIBRA.SAMPLER.FLOOR_FRACTION")],
)
def test_sampler_bad_value_names_the_argument_or_the_config_key(kwargs, key):
    # Built directly (Python, LazyConfig), the error names the constructor's argument; built from
    # a config by LibraROIHeads, the key.
    (name,) = kwargs
    with pytest.raises(ValueError, match=f"^{name} = "):
        sampler(**kwargs)
    value = str(kwargs[name])
    cfg = load_cfg("configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml", ["MODEL.DEVICE", "cpu", key, value])
    with pytest.raises(ValueError, match="^" + key.replace(".", r"\.") + " = "):
        build_model(cfg)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"binning": "mmdet"}, {"floor_thr": 0.1, "floor_fraction": 0.5},
     {"binning": "mmdet", "floor_thr": 0.1, "floor_fraction": 0.5}, {"pos": "random", "neg": "random"}],
)
def test_sampler_reads_nothing_back_to_the_host(kwargs):
    # On the meta device a tensor has no data: any value read back to the host (.item(),
    # nonzero, bincount, a Python branch on a tensor) raises. A CPU stand-in for "no
    # host-device synchronisation on the GPU".
    n = 3000
    inputs = dict(gt_classes=torch.empty(n, dtype=torch.int64, device="meta"), max_iou=torch.empty(n, device="meta"),
                  gt_index=torch.empty(n, dtype=torch.int64, device="meta"),
                  image_index=torch.empty(n, dtype=torch.int64, device="meta"))  # fmt: skip
    pos, neg = sampler(**kwargs)(**inputs, num_images=2, num_gts=20, num_classes=10)
    assert pos.device.type == neg.device.type == "meta" and pos.shape == neg.shape == (n,)
    with pytest.raises((NotImplementedError, RuntimeError)):
        torch.empty(3, device="meta").nonzero()  # the stand-in does catch a host read
