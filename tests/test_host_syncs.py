"""Host-device synchronisations of a training step, counted on the CPU (benchmarks/host_syncs.py).

The counts that matter on a GPU: none in the project's components (BalancedRoISampler, the BFP,
balanced L1, FSAF's targets, level selection and GIoU loss), no more in a Libra model than in its
baseline, exactly the project's own syncs listed here, so that a change adding one fails, and none
made by FSAF's anchor-free losses, counting those of the libraries they call and of their backward.
"""
import pytest
import torch
import torchvision

from benchmarks.host_syncs import (
    PAIRS,
    HostSyncCounter,
    audit_components,
    audit_label_and_sample,
    count_syncs,
    step_events,
    training_batch,
)
from libra_rcnn.modeling import fsaf

from conftest import load_cfg

# Our own syncs per training step (two images), each made once per batch: the per-image
# counts of the sampled RoIs (needed on the host to split them), and the number of positive
# anchors for the loss normaliser (as Detectron2's RetinaNet).
OURS = {
    "faster_rcnn_R_18_FPN_GN": [],
    "libra_rcnn_R_18_FPN_GN": ["Tensor.tolist at libra_rcnn/modeling/roi_heads.py (label_and_sample_proposals)"],
    "retinanet_R_18_FPN_GN": [],
    "libra_retinanet_R_18_FPN_GN": ["aten._local_scalar_dense at libra_rcnn/modeling/retinanet.py (losses)"],
    "fsaf_R_18_FPN_GN": [],
    "ab_fsaf_R_18_FPN_GN": [],
}


def _without_line(event) -> str:
    path, _, function = event.site.partition(" ")
    return f"{event.op} at {path.rsplit(':', 1)[0]} {function}"


def test_the_counter_sees_each_kind_of_sync_and_nothing_else():
    x = torch.tensor([0.5, -1.0, 2.0, 0.0])
    mask = x > 0
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])

    def syncing():
        x.sum().item()
        bool(x.max() > 1)
        torch.nonzero(mask)
        x[mask]
        y = x.clone()
        y[mask] = 0.0
        torch.unique(x)
        torch.repeat_interleave(torch.tensor([1, 2]))
        x.tolist()
        x.cpu()
        x.to("cpu")
        torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)

    def free():
        torch.where(mask, x, torch.zeros_like(x)).sum()
        x.index_select(0, torch.tensor([0, 2]))
        torch.nonzero_static(mask, size=2)
        torch.repeat_interleave(torch.tensor([1, 2]), output_size=3)
        x.masked_fill(~mask, 0.0).cumsum(0)
        x.to(x.device)

    ops = [e.op for e in count_syncs(syncing)]
    assert ops == ["aten._local_scalar_dense", "aten._local_scalar_dense", "aten.nonzero", "aten.index.Tensor",
                   "aten.index_put_", "aten._unique2", "aten.repeat_interleave.Tensor", "Tensor.tolist",
                   "Tensor.cpu", "Tensor.to", "torchvision.nms"]  # fmt: skip
    assert count_syncs(free) == []
    with HostSyncCounter() as counter:
        x.sum().item()
    assert counter.events[0].site.startswith("tests/test_host_syncs.py:") and counter.events[0].owner == "tests"
    assert counter.events[0].callers == ()  # no frame of the project's package


def test_the_projects_components_make_no_sync():
    for name, events in audit_components().items():
        assert events == [], (name, [f"{e.op} at {e.site}" for e in events])


@pytest.fixture(scope="module")
def batch(tiny_scenes):
    return training_batch("tiny_scenes_train", 2)


@pytest.fixture(scope="module")
def counts(batch):
    return {name: step_events(load_cfg(f"configs/FashionScenes/{name}.yaml", ["MODEL.DEVICE", "cpu"]), batch)
            for pair in PAIRS for name in pair}  # fmt: skip


@pytest.mark.parametrize("baseline,libra", PAIRS[:2])
def test_each_libra_model_syncs_no_more_than_its_baseline(counts, baseline, libra):
    assert len(counts[libra]) <= len(counts[baseline]), (len(counts[libra]), len(counts[baseline]))


def test_fsafs_anchor_free_branch_adds_no_sync(counts, batch):
    """AB+FSAF = RetinaNet's syncs and none more, with GIoU (the FashionScenes configs) and with
    the paper's IoU loss; FSAF alone makes none on the device."""
    retinanet = sorted(f"{e.op} at {e.site}" for e in counts["retinanet_R_18_FPN_GN"])
    assert sorted(f"{e.op} at {e.site}" for e in counts["ab_fsaf_R_18_FPN_GN"]) == retinanet
    iou = load_cfg("configs/FashionScenes/ab_fsaf_R_18_FPN_GN.yaml", ["MODEL.DEVICE", "cpu",
                                                                      "MODEL.LIBRA.FSAF.BOX_LOSS_TYPE", "iou"])  # fmt: skip
    assert sorted(f"{e.op} at {e.site}" for e in step_events(iou, batch)) == retinanet
    assert [f"{e.op} at {e.site}" for e in counts["fsaf_R_18_FPN_GN"] if e.on_device] == []


@pytest.mark.parametrize("name", ["fsaf_R_18_FPN_GN", "ab_fsaf_R_18_FPN_GN"])
def test_fsafs_anchor_free_losses_make_no_sync_nor_do_the_libraries_they_call(counts, name):
    assert load_cfg(f"configs/FashionScenes/{name}.yaml").MODEL.LIBRA.FSAF.BOX_LOSS_TYPE == "giou"
    charged = [f"{e.op} at {e.site} for {e.callers}" for e in counts[name] if e.within("anchor_free_losses")]
    assert charged == []


@pytest.mark.skipif(not hasattr(torch.autograd.graph, "node_creation_hook"),
                    reason="charging the backward pass needs torch.autograd.graph.node_creation_hook")
def test_a_librarys_syncs_are_charged_to_the_loss_that_calls_it_forward_and_backward(batch, monkeypatch):
    """With torchvision's generalized_box_iou_loss in FSAF's anchor-free losses, its boolean masks
    (forward) and their backward are made at torchvision's lines or by autograd, none at ours: each
    is charged to anchor_free_losses all the same."""
    monkeypatch.setattr(fsaf, "giou_loss", lambda pred, target: torchvision.ops.generalized_box_iou_loss(pred, target))
    events = step_events(load_cfg("configs/FashionScenes/fsaf_R_18_FPN_GN.yaml", ["MODEL.DEVICE", "cpu"]), batch)
    charged = [e for e in events if e.within("anchor_free_losses")]
    forward = [e for e in charged if e.owner == "torchvision"]
    backward = [e for e in charged if e.site == "autograd (backward pass)"]
    assert forward and backward and len(forward) + len(backward) == len(charged), [f"{e.op} at {e.site}" for e in charged]
    assert not any(e.owner == "libra_rcnn" for e in charged)  # the owner alone misses them


@pytest.mark.parametrize("name", list(OURS))
def test_the_projects_own_syncs_in_a_training_step_are_these(counts, name):
    ours = sorted(_without_line(e) for e in counts[name] if e.owner == "libra_rcnn")
    assert ours == sorted(OURS[name])


def test_libras_sampling_syncs_less_than_detectron2s(batch):
    events = audit_label_and_sample(batch)
    assert len(events["LibraROIHeads.label_and_sample_proposals"]) < len(events["StandardROIHeads.label_and_sample_proposals"])


def test_the_gradient_share_statistic_costs_one_sync_on_its_iterations_only(batch):
    cfg = load_cfg("configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml", ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.LIBRA.ANALYSIS.GRAD_SHARE_PERIOD == 20
    off, on = step_events(cfg, batch, iteration=0), step_events(cfg, batch, iteration=19)
    extra = [f"{e.op} at {e.site}" for e in on]
    for e in off:
        extra.remove(f"{e.op} at {e.site}")
    assert len(extra) == 1 and extra[0].startswith("Tensor.tolist at libra_rcnn/modeling/box_predictor.py")
