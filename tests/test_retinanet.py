"""Libra RetinaNet: BFP on P3–P7 keeps RetinaNet's levels; the balanced L1 box loss
(docs/methods.md#focal-loss-and-retinanet)."""
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from libra_rcnn import LibraRetinaNet, balanced_l1_loss

from conftest import load_cfg

LIBRA = "configs/COCO-Detection/libra_retinanet_R_50_FPN_1x.yaml"
BASELINE = "configs/COCO-Detection/retinanet_R_50_FPN_1x.yaml"
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "18",
         "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RETINANET.NUM_CLASSES", "3"]  # fmt: skip


def model(config, *overrides):
    return build_model(load_cfg(config, SMALL + list(overrides)))


def test_bfp_on_p3_p7_keeps_retinanet_names_and_strides():
    libra, base = model(LIBRA), model(BASELINE)
    assert isinstance(libra, LibraRetinaNet)
    shapes, base_shapes = libra.backbone.output_shape(), base.backbone.output_shape()
    assert shapes == base_shapes
    assert {k: v.stride for k, v in shapes.items()} == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    assert libra.backbone.refine_level == 1 and libra.backbone.refine_type == "non_local"
    features = libra.backbone(torch.randn(1, 3, 128, 128))
    assert [features[k].shape[-1] for k in ("p3", "p4", "p5", "p6", "p7")] == [16, 8, 4, 2, 1]


def dense_inputs(seed=0):
    """Two images, anchors on two levels (R = 6 + 3), labels with positives, negatives, ignored."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(9, 2, generator=g) * 50
    anchors_all = torch.cat([xy, xy + 10 + torch.rand(9, 2, generator=g) * 20], dim=1)
    anchors = [Boxes(anchors_all[:6]), Boxes(anchors_all[6:])]
    gt_labels = [torch.tensor([0, 3, 3, -1, 2, 3, 1, 3, 3]), torch.tensor([3, 3, 1, 1, 3, -1, 3, 3, 0])]
    gt_boxes = [anchors_all + torch.randn(9, 4, generator=g) * 3 for _ in range(2)]
    logits = [torch.randn(2, 6, 3, generator=g), torch.randn(2, 3, 3, generator=g)]
    deltas = [torch.randn(2, 6, 4, generator=g) * 0.2, torch.randn(2, 3, 4, generator=g) * 0.2]
    return anchors, logits, gt_labels, deltas, gt_boxes


@pytest.mark.parametrize("variant", ["paper", "mmdet"])
def test_balanced_l1_box_loss_and_unchanged_focal_loss(variant):
    libra = model(LIBRA, "MODEL.LIBRA.RETINANET.BALANCED_L1.VARIANT", variant)
    base = model(BASELINE)
    anchors, logits, labels, deltas, gt_boxes = dense_inputs()
    with EventStorage():
        ours = libra.losses(anchors, logits, labels, deltas, gt_boxes)
        theirs = base.losses(anchors, logits, labels, deltas, gt_boxes)
    torch.testing.assert_close(ours["loss_cls"], theirs["loss_cls"])
    # Box loss by hand: positives are labels in [0, 3); normaliser = EMA 0.9 * 100 + 0.1 * #pos.
    all_anchors = torch.cat([a.tensor for a in anchors])
    pred = torch.cat(deltas, dim=1)
    total, num_pos = 0.0, 0
    for i in range(2):
        pos = (labels[i] >= 0) & (labels[i] < 3)
        num_pos += int(pos.sum())
        target = libra.box2box_transform.get_deltas(all_anchors[pos], gt_boxes[i][pos])
        total = total + balanced_l1_loss(pred[i][pos], target, beta=0.11, variant=variant, reduction="sum")
    torch.testing.assert_close(ours["loss_box_reg"], total / (0.9 * 100 + 0.1 * num_pos))


def test_other_loss_types_stay_detectron2s():
    libra = model(LIBRA, "MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "giou")
    base = model(BASELINE, "MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "giou")
    inputs = dense_inputs(1)
    with EventStorage():
        torch.testing.assert_close(libra.losses(*inputs)["loss_box_reg"], base.losses(*inputs)["loss_box_reg"])


@pytest.mark.parametrize(
    "key,value",
    [("MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "l2"), ("MODEL.LIBRA.RETINANET.BALANCED_L1.BETA", 0.0),
     ("MODEL.LIBRA.RETINANET.BALANCED_L1.VARIANT", "v3")],
)
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        model(LIBRA, key, value)
