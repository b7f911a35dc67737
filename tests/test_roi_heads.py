"""LibraROIHeads.label_and_sample_proposals keeps Detectron2's contract."""
import pytest
import torch

from detectron2.modeling.roi_heads import StandardROIHeads, build_roi_heads
from detectron2.structures import BitMasks, Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from libra_rcnn import LibraFastRCNNOutputLayers, LibraROIHeads

from conftest import load_cfg

CONFIG = "configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml"


def heads(name="LibraROIHeads", overrides=()):
    from detectron2.layers import ShapeSpec

    cfg = load_cfg(CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NAME", name, *overrides])
    shapes = {f"p{i}": ShapeSpec(channels=128, stride=2**i) for i in range(2, 7)}
    return build_roi_heads(cfg, shapes)


def scene(num_gt, num_proposals, size=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(num_gt, 2, generator=g) * (size - 60)
    gt_boxes = torch.cat([gt, gt + 20 + torch.rand(num_gt, 2, generator=g) * 40], dim=1)
    # Proposals: jittered copies of the GT boxes and random boxes.
    jitter = gt_boxes.repeat(num_proposals // max(num_gt, 1) // 2 + 1, 1)[: num_proposals // 2]
    jitter = jitter + torch.randn(jitter.shape, generator=g) * 6
    xy = torch.rand(num_proposals - len(jitter), 2, generator=g) * (size - 40)
    rand = torch.cat([xy, xy + 8 + torch.rand(len(xy), 2, generator=g) * 60], dim=1)
    boxes = torch.cat([jitter, rand]).clamp(0, size)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    proposals = Instances((size, size))
    proposals.proposal_boxes = Boxes(boxes)
    proposals.objectness_logits = torch.randn(len(boxes), generator=g)
    targets = Instances((size, size))
    targets.gt_boxes = Boxes(gt_boxes)
    targets.gt_classes = torch.randint(0, 10, (num_gt,), generator=g)
    targets.gt_masks = BitMasks(torch.rand(num_gt, size, size, generator=g) > 0.5)
    return proposals, targets


def test_registered_and_uses_the_libra_predictor():
    h = heads()
    assert isinstance(h, LibraROIHeads)
    assert isinstance(h.box_predictor, LibraFastRCNNOutputLayers)
    assert h.box_predictor.box_reg_loss_type == "balanced_l1"


def test_labels_matches_and_gt_fields():
    h = heads()
    (p0, t0), (p1, t1) = scene(5, 600, seed=1), scene(0, 300, seed=2)
    with EventStorage() as storage:
        out = h.label_and_sample_proposals([p0, p1], [t0, t1])
        assert storage.history("roi_head/num_fg_samples").latest() >= 1
    s0, s1 = out
    assert len(s0) == 256  # BATCH_SIZE_PER_IMAGE of the CPU config
    fg = s0.gt_classes < 10
    # Positives first, as in Detectron2.
    assert not fg[int(fg.sum()) :].any()
    iou = pairwise_iou(s0.proposal_boxes, s0.gt_boxes).diagonal()
    assert (iou[fg] >= 0.5).all()
    best = pairwise_iou(t0.gt_boxes, s0.proposal_boxes).max(dim=0).values
    assert (best[~fg] < 0.5).all()
    torch.testing.assert_close(best[fg], iou[fg])
    assert len(s0.gt_masks) == len(s0)
    matched = pairwise_iou(s0.gt_boxes, t0.gt_boxes).argmax(dim=1)
    assert torch.equal(s0.gt_masks.tensor, t0.gt_masks.tensor[matched])
    # The image without GT boxes: every sampled RoI is background, no gt_boxes (as Detectron2).
    assert (s1.gt_classes == 10).all() and len(s1) == 256 and not s1.has("gt_boxes")


def test_same_rois_as_detectron2_when_all_are_taken():
    overrides = ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "4096", "MODEL.ROI_HEADS.POSITIVE_FRACTION", "0.5"]
    ours, theirs = heads(overrides=overrides), heads("StandardROIHeads", overrides)
    assert type(theirs) is StandardROIHeads
    proposals, targets = zip(scene(4, 500, seed=3), scene(2, 200, seed=4))
    with EventStorage():
        a = ours.label_and_sample_proposals(list(proposals), list(targets))
        b = theirs.label_and_sample_proposals(list(proposals), list(targets))
    for x, y in zip(a, b):
        kx = torch.argsort(x.proposal_boxes.tensor[:, 0] * 1e4 + x.proposal_boxes.tensor[:, 1])
        ky = torch.argsort(y.proposal_boxes.tensor[:, 0] * 1e4 + y.proposal_boxes.tensor[:, 1])
        for field in ("proposal_boxes", "gt_boxes"):
            torch.testing.assert_close(x.get(field).tensor[kx], y.get(field).tensor[ky])
        assert torch.equal(x.gt_classes[kx], y.gt_classes[ky])
        assert torch.equal(x.gt_masks.tensor[kx], y.gt_masks.tensor[ky])


@pytest.mark.parametrize(
    "key,value",
    [("MODEL.LIBRA.SAMPLER.NUM_BINS", 0), ("MODEL.LIBRA.SAMPLER.BINNING", "quantile"),
     ("MODEL.LIBRA.SAMPLER.FLOOR_THR", 0.8), ("MODEL.LIBRA.BALANCED_L1.ALPHA", 0.0),
     ("MODEL.LIBRA.BALANCED_L1.GAMMA", -1.0), ("MODEL.LIBRA.BALANCED_L1.BETA", 0.0),
     ("MODEL.LIBRA.BALANCED_L1.VARIANT", "v2"), ("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "l2")],
)
def test_bad_values_fail_at_build_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        heads(overrides=[key, value])


def test_balanced_l1_box_loss_is_normalised_like_smooth_l1():
    # One foreground RoI among R = 4: loss = sum over its 4 deltas / 4.
    h = heads()
    pred = h.box_predictor
    proposals = torch.tensor([[10.0, 10, 50, 50]] * 4)
    gt = torch.tensor([[12.0, 8, 54, 50]] * 4)
    deltas = torch.zeros(4, 40, requires_grad=True)
    classes = torch.tensor([3, 10, 10, -1])
    loss = pred.box_reg_loss(proposals, gt, deltas, classes)
    target = pred.box2box_transform.get_deltas(proposals[:1], gt[:1])
    from libra_rcnn import balanced_l1_loss

    want = balanced_l1_loss(torch.zeros(1, 4), target, reduction="sum") / 4
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert deltas.grad[0, 12:16].abs().sum() > 0  # class 3's deltas of the foreground RoI
    assert deltas.grad[1:].abs().sum() == 0 and deltas.grad[0, :12].abs().sum() == 0


@pytest.mark.parametrize("loss_type", ["smooth_l1", "giou"])
def test_other_loss_types_are_detectron2s(loss_type):
    # The Libra predictor honours Detectron2's loss types: same value as FastRCNNOutputLayers.
    from detectron2.modeling.roi_heads import FastRCNNOutputLayers

    ours = heads(overrides=["MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", loss_type]).box_predictor
    cfg = load_cfg(CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", loss_type])
    theirs = FastRCNNOutputLayers(cfg, ours.cls_score.in_features)
    assert type(theirs) is FastRCNNOutputLayers and theirs.box_reg_loss_type == loss_type
    proposals = torch.tensor([[10.0, 10, 50, 50], [0, 0, 30, 20], [5, 5, 25, 45]])
    gt = torch.tensor([[12.0, 8, 54, 50], [2, 1, 28, 26], [5, 5, 25, 45]])
    deltas = torch.randn(3, 40, generator=torch.Generator().manual_seed(0)) * 0.1
    classes = torch.tensor([3, 7, 10])
    torch.testing.assert_close(
        ours.box_reg_loss(proposals, gt, deltas, classes), theirs.box_reg_loss(proposals, gt, deltas, classes)
    )
