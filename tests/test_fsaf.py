"""FSAF: ground truth per level, online feature selection, distance decoding, the box losses (GIoU
against torchvision's), training, eval-only."""
import math

import pytest
import torch

from fvcore.nn import sigmoid_focal_loss
from torchvision.ops import generalized_box_iou_loss

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.env import seed_all_rng

from benchmarks.host_syncs import count_syncs
from libra_rcnn import FSAF, fsaf_targets, giou_loss, iou_loss, select_levels
from libra_rcnn.config import build_config
from libra_rcnn.engine import Trainer
from libra_rcnn.modeling import fsaf as fsaf_module

from conftest import REPO, SMALL_OVERRIDES, load_cfg
from test_train_net import TINY, args_for, train_net

FSAF_CONFIG = "configs/FashionScenes/fsaf_R_18_FPN_GN.yaml"
AB_FSAF_CONFIG = "configs/FashionScenes/ab_fsaf_R_18_FPN_GN.yaml"


def grid(size, stride):
    """Pixel centres (x, y) of a size x size image at one stride, row-major like the heads."""
    c = torch.arange(stride / 2, size, stride)
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=1)


def counts(owner, ignored, level_mask):
    """(positive, ignored, negative) pixels of one image on one level."""
    pos = int((owner[level_mask] >= 0).sum())
    ign = int(ignored[level_mask].sum())
    return pos, ign, int(level_mask.sum()) - pos - ign


def test_targets_on_hand_made_boxes():
    # A 64x64 image, strides 8 (centres 4, 12, ..., 60) and 16 (centres 8, 24, 40, 56).
    points = torch.cat([grid(64, 8), grid(64, 16)])
    strides = torch.cat([torch.full((64,), 8.0), torch.full((16,), 16.0)])
    level0 = torch.arange(80) < 64
    a, c, d = [8.0, 8, 48, 48], [20.0, 20, 36, 36], [0.0, 0, 64, 64]
    gt = torch.tensor([[a, a], [a, c], [d, d]])
    valid = torch.tensor([[True, False], [True, True], [True, False]])
    owner, ignored = fsaf_targets(points, strides, gt, valid, effective_scale=0.2, ignore_scale=0.5)

    # Image 0, box A (40x40, centre 28). Stride 8: the effective box is |x-28| <= 4 -> centre 28
    # only: 1 positive; the ignoring box |x-28| <= 10 -> centres 20, 28, 36: 9 - 1 = 8 ignored.
    # Stride 16: |x-28| <= 4 -> centre 24: 1 positive; |x-28| <= 10 -> 24 only: none ignored.
    assert counts(owner[0], ignored[0], level0) == (1, 8, 55)
    assert counts(owner[0], ignored[0], ~level0) == (1, 0, 15)
    # Image 1: box C (16x16, same centre) lies in A's effective region and is smaller: it takes
    # the pixel on both levels, so A owns nothing there.
    assert counts(owner[1], ignored[1], level0) == (1, 8, 55)
    assert set(owner[1][owner[1] >= 0].tolist()) == {1}
    # Image 2, box D (64x64, centre 32). Stride 8: |x-32| <= 6.4 -> 28, 36: 2x2 positives;
    # |x-32| <= 16 -> 20, 28, 36, 44: 16 - 4 = 12 ignored. Stride 16: no centre within 6.4,
    # so the cell holding the centre (32 -> cell 2, centre 40) is the positive; |x-32| <= 16
    # -> 24, 40: 4 - 1 = 3 ignored.
    assert counts(owner[2], ignored[2], level0) == (4, 12, 48)
    assert counts(owner[2], ignored[2], ~level0) == (1, 3, 12)
    positive_centres = points[owner[2] >= 0].tolist()
    assert positive_centres == [[28, 28], [36, 28], [28, 36], [36, 36], [40, 40]]


def test_online_selection_picks_the_level_of_minimum_mean_loss():
    level_ids = torch.tensor([0, 0, 1, 1, 1, 2, 0, 2])
    owner = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1]])
    # Instance 0: level 0 mean 3 (sum 6), level 1 mean 2 (sum 6), level 2 mean 2.5 (sum 2.5):
    # the mean picks level 1 where the sum would pick level 2. Instance 1: 5 on level 0, 0.5 on 2.
    loss = torch.tensor([[3.0, 3.0, 1.0, 1.0, 4.0, 2.5, 5.0, 0.5]])
    assert select_levels(loss, owner, level_ids, num_levels=3, num_gt=2).tolist() == [[1, 2]]
    # Pixels that are not positive (owner -1) never count, whatever their loss.
    owner[0, 2:5] = -1
    assert select_levels(loss, owner, level_ids, num_levels=3, num_gt=2).tolist() == [[2, 2]]


def test_iou_loss_hand_values():
    pred = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    target = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20], [20, 20, 30, 30]])
    loss = iou_loss(pred, target)
    assert loss[0].item() == pytest.approx(0.0, abs=1e-6)
    assert loss[1].item() == pytest.approx(math.log(2.0))  # IoU 100 / 200
    assert loss[2].item() == pytest.approx(-math.log(1e-6))  # disjoint: the floor


def torchvisions_giou(pred, target):
    return generalized_box_iou_loss(pred, target, reduction="none", eps=1e-7)


def value_and_grads(loss_fn, pred, target, seed=1):
    """The loss and its gradients w.r.t. both boxes, for a fixed random upstream gradient."""
    pred, target = pred.detach().clone().requires_grad_(), target.detach().clone().requires_grad_()
    loss = loss_fn(pred, target)
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(seed), dtype=loss.dtype)
    loss.backward(upstream)
    return loss.detach(), pred.grad, target.grad


def random_boxes(n, dtype, generator):
    """n XYXY boxes in a 100-pixel square, sides up to 60; one in five has a zero side, one in ten
    is a point."""
    corner = torch.rand(n, 2, generator=generator, dtype=dtype) * 100
    side = torch.rand(n, 2, generator=generator, dtype=dtype) * 60
    pick = torch.rand(n, generator=generator)
    side[pick < 0.1] = 0.0
    side[(pick >= 0.1) & (pick < 0.2), 0] = 0.0
    side[(pick >= 0.2) & (pick < 0.3), 1] = 0.0
    return torch.cat([corner, corner + side], dim=1)


# (pred, target) pairs, XYXY pixels: degenerate, coincident and disjoint boxes.
HAND_BUILT_PAIRS = [
    ([0.0, 0, 0, 10], [0.0, 0, 10, 10]),  # zero width
    ([0.0, 0, 10, 0], [0.0, 0, 10, 10]),  # zero height
    ([2.0, 3, 12, 23], [2.0, 3, 12, 23]),  # identical (every min/max ties)
    ([5.0, 5, 5, 5], [5.0, 5, 5, 5]),  # both of zero area, identical
    ([0.0, 0, 0, 0], [3.0, 3, 3, 3]),  # both of zero area, apart
    ([4.0, 0, 4, 10], [0.0, 0, 10, 10]),  # a segment inside a box
    ([4.0, -5, 4, 8], [0.0, 0, 10, 10]),  # a segment across a box's edge
    ([0.0, 0, 10, 10], [20.0, 20, 30, 30]),  # disjoint
    ([0.0, 0, 10, 10], [15.0, 2, 25, 8]),  # disjoint in x, overlapping in y
    ([0.0, 0, 10, 10], [10.0, 0, 20, 10]),  # touching along an edge
    ([0.0, 0, 10, 10], [10.0, 2, 20, 8]),  # touching along part of an edge
    ([0.0, 0, 10, 10], [10.0, 10, 20, 20]),  # touching at a corner
    ([0.0, 0, 10, 10], [0.0, 0, 10, 5]),  # sharing three sides
    ([10.0, 10, 20, 20], [0.0, 0, 100, 100]),  # inside
    ([0.5, 0.25, 7.75, 3.5], [1.0, 0.125, 6.5, 9.0]),  # partial overlap
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_giou_loss_equals_torchvisions_in_value_and_gradient(dtype):
    g = torch.Generator().manual_seed(0)
    random_pred, random_target = random_boxes(2000, dtype, g), random_boxes(2000, dtype, g)
    hand_pred, hand_target = (torch.tensor(boxes, dtype=dtype) for boxes in zip(*HAND_BUILT_PAIRS))
    # Each hand-built pair both ways round, then the random ones: (N, 4), and (B, P, 4) as in FSAF.
    pred = torch.cat([hand_pred, hand_target, random_pred])
    target = torch.cat([hand_target, hand_pred, random_target])
    for shape in ((2, -1, 4), (-1, 4)):
        ours = value_and_grads(giou_loss, pred.view(shape), target.view(shape))
        reference = value_and_grads(torchvisions_giou, pred.view(shape), target.view(shape))
        for name, a, b in zip(("loss", "d/d pred", "d/d target"), ours, reference):
            assert a.dtype == b.dtype == dtype and a.shape == b.shape, name
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")
    # Disjoint boxes get the penalty's gradient, not zero.
    assert ours[1][7].abs().sum() > 0 and ours[2][7].abs().sum() > 0


def test_giou_loss_hand_values():
    pred = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 5], [0, 0, 10, 10]])
    target = torch.tensor([[0.0, 0, 10, 10], [0, 0, 20, 20], [20, 0, 30, 10], [5, 5, 5, 5], [10, 0, 20, 10]])
    loss = giou_loss(pred, target)
    assert loss[0].item() == pytest.approx(0.0, abs=1e-6)  # identical
    assert loss[1].item() == pytest.approx(0.75)  # IoU 100 / 400, C = the union
    assert loss[2].item() == pytest.approx(1 + 100 / 300)  # disjoint: IoU 0, C 300, union 200
    assert loss[3].item() == pytest.approx(1.0)  # two empty boxes: IoU 0 (eps), no penalty
    assert loss[4].item() == pytest.approx(1.0)  # touching: IoU 0, C = the union


def test_giou_loss_computes_other_dtypes_in_float32_and_checks_the_shape():
    pred = torch.tensor([[0.0, 0, 10, 10], [1, 2, 3, 4]])
    target = torch.tensor([[2.0, 1, 12, 9], [0, 0, 5, 5]])
    for dtype in (torch.float16, torch.bfloat16):
        loss = giou_loss(pred.to(dtype), target.to(dtype))
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, torchvisions_giou(pred.to(dtype), target.to(dtype)), rtol=0, atol=1e-6)
    assert giou_loss(pred.long(), target.long()).dtype == torch.float32
    with pytest.raises(ValueError, match=r"shape \(..., 4\), got \(2, 3\) and \(2, 4\)"):
        giou_loss(pred[:, :3], target)


def test_giou_loss_makes_no_sync_and_exports_with_symbolic_shapes():
    g = torch.Generator().manual_seed(0)
    pred, target = random_boxes(64, torch.float32, g).requires_grad_(), random_boxes(64, torch.float32, g)
    assert count_syncs(lambda: giou_loss(pred, target).sum().backward()) == []

    class Loss(torch.nn.Module):
        def forward(self, pred, target):
            return giou_loss(pred, target)

    images, pixels = torch.export.Dim("images"), torch.export.Dim("pixels")
    exported = torch.export.export(Loss(), (pred.detach().view(2, 32, 4), target.view(2, 32, 4)),
                                   dynamic_shapes=({0: images, 1: pixels}, {0: images, 1: pixels}))  # fmt: skip
    other_pred, other_target = (random_boxes(3 * 37, torch.float32, g).view(3, 37, 4) for _ in range(2))
    torch.testing.assert_close(exported.module()(other_pred, other_target), torchvisions_giou(other_pred, other_target),
                               rtol=0, atol=1e-6)  # fmt: skip


@pytest.fixture(scope="module")
def fsaf_model():
    return build_model(load_cfg(FSAF_CONFIG, [*SMALL_OVERRIDES, "MODEL.LIBRA.FSAF.BOX_LOSS_TYPE", "iou"]))


def test_distances_round_trip_in_units_of_s_times_stride(fsaf_model):
    features = [torch.zeros(1, 1, 128 // s, 128 // s) for s in (8, 16, 32, 64, 128)]
    anchors = fsaf_model.af_anchor_generator(features)
    # The first pixel of P3: centre (4, 4); S = 4 -> the unit of distance is 4 x 8 = 32 pixels.
    assert anchors[0].tensor[0].tolist() == [-12.0, -12.0, 20.0, 20.0]
    box = torch.tensor([[0.0, 1.0, 36.0, 20.0]])
    distances = fsaf_model.af_box2box_transform.get_deltas(anchors[0].tensor[:1], box)
    # (left, top, right, bottom) = (4 - 0, 4 - 1, 36 - 4, 20 - 4) / 32
    assert distances.tolist() == [[4 / 32, 3 / 32, 32 / 32, 16 / 32]]
    decoded = fsaf_model.af_box2box_transform.apply_deltas(distances, anchors[0].tensor[:1])
    assert torch.allclose(decoded, box)
    # Random boxes around random pixels of every level come back unchanged.
    g = torch.Generator().manual_seed(0)
    for level in anchors:
        src = level.tensor[torch.randint(len(level), (50,), generator=g)]
        centre = (src[:, :2] + src[:, 2:]) / 2
        boxes = torch.cat([centre - 40 * torch.rand(50, 2, generator=g), centre + 40 * torch.rand(50, 2, generator=g)], 1)
        back = fsaf_model.af_box2box_transform.apply_deltas(fsaf_model.af_box2box_transform.get_deltas(src, boxes), src)
        assert torch.allclose(back, boxes, atol=1e-4)


def test_only_the_selected_level_trains_the_instance(fsaf_model):
    """The box loss is the mean IoU loss of the instance's pixels on its selected level; on the
    other levels its pixels drop their own class from the focal loss."""
    fsaf_model.train()
    gt = torch.tensor([[30.0, 30.0, 90.0, 80.0]])  # 60x50: FPN's rule puts it on P3
    inst = Instances((128, 128), gt_boxes=Boxes(gt), gt_classes=torch.tensor([3]))
    with torch.no_grad():
        features = fsaf_model.backbone(torch.rand(1, 3, 128, 128) * 255)
        features = [features[f] for f in fsaf_model.head_in_features]
        _, _, af_logits, af_distances = fsaf_model.head(features)
        # The reference, level by level, from the per-pixel pieces.
        logits = torch.cat([x.permute(0, 2, 3, 1).reshape(-1, 10) for x in af_logits])
        distances = torch.cat([x.permute(0, 2, 3, 1).reshape(-1, 4) for x in af_distances])
        anchors, points, strides, level_ids = fsaf_model._pixels(features)
        owner, ignored = fsaf_targets(points, strides, gt[None], torch.tensor([[True]]))
        positive = owner[0] >= 0
        onehot = torch.nn.functional.one_hot(torch.full((len(points),), 3), 10).float() * positive[:, None]
        focal = sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0, reduction="none")
        box = iou_loss(fsaf_model.af_box2box_transform.apply_deltas(distances, anchors), gt.expand(len(points), 4))
        levels = [l for l in range(5) if (positive & (level_ids == l)).any()]
        mean = {l: ((focal.sum(1) + box)[positive & (level_ids == l)].mean(), box[positive & (level_ids == l)].mean()) for l in levels}
        best = min(levels, key=lambda l: mean[l][0])
        for selection, level in (("online", best), ("heuristic", 0)):
            fsaf_model.selection = selection
            losses = fsaf_model.anchor_free_losses(features, af_logits, af_distances, [inst])
            assert losses["loss_af_box"].item() == pytest.approx(mean[level][1].item(), rel=1e-5)
            on_level = positive & (level_ids == level)
            elsewhere = positive & ~on_level
            expected_cls = focal[~ignored[0]].sum() - focal[elsewhere, 3].sum()
            assert losses["loss_af_cls"].item() == pytest.approx((expected_cls / on_level.sum()).item(), rel=1e-5)
    fsaf_model.selection = "online"


def test_the_giou_box_loss_equals_torchvisions_in_the_model(fsaf_model, monkeypatch):
    """``BOX_LOSS_TYPE: "giou"``: the anchor-free losses and their gradients w.r.t. the predicted
    distances are those that torchvision's generalized_box_iou_loss gives."""
    fsaf_model.train()
    monkeypatch.setattr(fsaf_model, "box_loss_type", "giou")
    gt = [Instances((128, 128), gt_boxes=Boxes(torch.tensor([[30.0, 30.0, 90.0, 80.0], [4.0, 60.0, 40.0, 124.0]])),
                    gt_classes=torch.tensor([3, 7]))]  # fmt: skip
    with torch.no_grad():
        features = fsaf_model.backbone(torch.rand(1, 3, 128, 128) * 255)
        features = [features[f] for f in fsaf_model.head_in_features]
        _, _, af_logits, af_distances = fsaf_model.head(features)

    def losses_and_grads():
        distances = [d.clone().requires_grad_() for d in af_distances]
        losses = fsaf_model.anchor_free_losses(features, af_logits, distances, gt)
        losses["loss_af_box"].backward()
        return losses, [d.grad for d in distances]

    ours, our_grads = losses_and_grads()
    monkeypatch.setattr(fsaf_module, "giou_loss", torchvisions_giou)
    reference, reference_grads = losses_and_grads()
    assert ours["loss_af_box"] > 0
    for key in ours:
        torch.testing.assert_close(ours[key], reference[key], rtol=0, atol=1e-6)
    for a, b in zip(our_grads, reference_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.fixture(scope="module", params=[FSAF_CONFIG, AB_FSAF_CONFIG])
def trained(request, tiny_scenes, tmp_path_factory):
    """60 iterations on the tiny split, in process; returns (config, output dir, losses, model)."""
    out = tmp_path_factory.mktemp("fsaf")
    args = args_for(
        "--config-file", str(REPO / request.param), *TINY, "SOLVER.MAX_ITER", "60", "SOLVER.WARMUP_ITERS", "5",
        "SOLVER.BASE_LR", "0.01", "SOLVER.CHECKPOINT_PERIOD", "1000", "OUTPUT_DIR", str(out),
    )  # fmt: skip
    seed_all_rng(7)  # the weights and the data order do not depend on the tests run before
    trainer = Trainer(build_config(args))
    trainer.resume_or_load(resume=False)
    trainer.train()
    return request.param, out, trainer.storage.history("total_loss").values(), trainer.model


def test_training_decreases_the_loss(trained):
    config, out, history, model = trained
    losses = [value for value, _ in history]
    assert len(losses) == 60 and all(math.isfinite(v) for v in losses)
    # 60 iterations on 8 images: the mean of the last 10 losses is 14 % (AB+FSAF) below the first
    # 10's with the data order of SEED 7; 10 % is asked.
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10, losses
    assert isinstance(model, FSAF) and model.anchor_based == (config == AB_FSAF_CONFIG)
    assert hasattr(model.head, "cls_score") == model.anchor_based


def test_eval_only(trained, tiny_scenes):
    config, out, _, _ = trained
    done = train_net(
        "--config-file", config, "--eval-only", *TINY, "MODEL.WEIGHTS", str(out / "model_final.pth"),
        "DATASETS.TEST", "('fashion_scenes_val',)", "OUTPUT_DIR", str(out / "eval"), datasets_root=tiny_scenes,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in done.stdout + done.stderr


@pytest.mark.parametrize(
    "key,value,match",
    [("EFFECTIVE_SCALE", "0.0", r"EFFECTIVE_SCALE = 0.0 is out of range"),
     ("IGNORE_SCALE", "0.1", r"IGNORE_SCALE = 0.1 is out of range; it must lie in \[0.2, 1.0\]"),
     ("NORM_SCALE", "-1.0", r"NORM_SCALE = -1.0 is out of range"),
     ("SELECTION", "'best'", r"SELECTION = 'best' is not allowed; choose one of \['online', 'heuristic'\]"),
     ("BOX_LOSS_TYPE", "'l1'", r"BOX_LOSS_TYPE = 'l1' is not allowed")],
)  # fmt: skip
def test_bad_values_name_the_key(key, value, match):
    cfg = load_cfg(FSAF_CONFIG, [*SMALL_OVERRIDES, f"MODEL.LIBRA.FSAF.{key}", value])
    with pytest.raises(ValueError, match=r"MODEL\.LIBRA\.FSAF\." + match):
        build_model(cfg)
