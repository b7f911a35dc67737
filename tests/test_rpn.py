"""LibraRPN: the reference implementation's bound of negative anchors per positive."""
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from libra_rcnn import LibraRPN

from conftest import SMALL_OVERRIDES, load_cfg

CONFIG = "configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml"  # the authors' RPN sampling by default


def rpn(*overrides):
    model = build_model(load_cfg(CONFIG, [*SMALL_OVERRIDES, *overrides]))
    assert isinstance(model.proposal_generator, LibraRPN)
    return model.proposal_generator


@pytest.mark.parametrize("num_pos,expected_neg", [(10, 50), (0, 5), (40, 200), (128, 128)])
def test_at_most_five_negatives_per_positive(num_pos, expected_neg):
    # 256 anchors per image, half positive at most: num_pos positives drawn (all of them up to 128),
    # then the negatives: 5 per positive (at least 5), at most 256 - positives.
    head = rpn()
    label = torch.zeros(5000, dtype=torch.int64)
    label[torch.randperm(5000, generator=torch.Generator().manual_seed(0))[:num_pos]] = 1
    drawn = head._subsample_labels(label.clone())
    pos = int((drawn == 1).sum())
    assert pos == min(num_pos, 128)
    assert int((drawn == 0).sum()) == min(expected_neg, 256 - pos, 5 * max(pos, 1))


def test_off_is_detectron2s_rpn():
    head = rpn("MODEL.LIBRA.RPN.NEG_POS_UB", "-1.0")
    label = torch.zeros(5000, dtype=torch.int64)
    label[:10] = 1
    torch.manual_seed(0)
    ours = head._subsample_labels(label.clone())
    torch.manual_seed(0)
    theirs = super(LibraRPN, head)._subsample_labels(label.clone())
    assert torch.equal(ours, theirs) and int((ours == 0).sum()) == 246


def test_losses_are_averaged_over_the_anchors_drawn():
    head = rpn()
    g = torch.Generator().manual_seed(1)
    num_anchors = 600
    gt_labels = [torch.full((num_anchors,), -1, dtype=torch.int64) for _ in range(2)]
    gt_labels[0][:6], gt_labels[0][6:36] = 1, 0  # 36 anchors drawn in image 0
    gt_labels[1][:20] = 0  # 20 negatives, no positive, in image 1
    logits = [torch.randn(2, num_anchors, generator=g)]
    deltas = [torch.randn(2, num_anchors, 4, generator=g)]
    from detectron2.structures import Boxes

    anchors = [Boxes(torch.tensor([[0.0, 0.0, 16.0, 16.0]]).repeat(num_anchors, 1))]
    gt_boxes = [torch.tensor([[1.0, 1.0, 15.0, 17.0]]).repeat(num_anchors, 1) for _ in range(2)]
    with EventStorage():
        ours = head.losses(anchors, logits, gt_labels, deltas, gt_boxes)
        theirs = super(LibraRPN, head).losses(anchors, logits, gt_labels, deltas, gt_boxes)
    # Detectron2 divides by 256 anchors x 2 images; ours by the 56 drawn.
    for key in ("loss_rpn_cls", "loss_rpn_loc"):
        torch.testing.assert_close(ours[key], theirs[key] * (256 * 2) / 56)
