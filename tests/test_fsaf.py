"""FSAF: ground truth per level, online feature selection, distance decoding, training, eval-only."""
import math

import pytest
import torch

from fvcore.nn import sigmoid_focal_loss

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.env import seed_all_rng

from libra_rcnn import FSAF, fsaf_targets, iou_loss, select_levels
from libra_rcnn.config import build_config
from libra_rcnn.engine import Trainer

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
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10, losses
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
