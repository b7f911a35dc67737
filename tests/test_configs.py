"""Every config in configs/ builds a model and runs one training step (with small sizes)."""
import pytest
import torch

from detectron2.data import build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import ALL_CONFIGS, SMALL_OVERRIDES, load_cfg


def test_configs_are_found():
    assert "configs/COCO-Detection/libra_rcnn_R_50_FPN_1x.yaml" in ALL_CONFIGS
    assert "configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml" in ALL_CONFIGS


@pytest.mark.parametrize("config_file", ALL_CONFIGS)
def test_config_builds_and_trains_one_step(config_file, tiny_scenes):
    overrides = SMALL_OVERRIDES + ["DATASETS.TRAIN", "('tiny_scenes_train',)", "DATALOADER.NUM_WORKERS", "0"]
    cfg = load_cfg(config_file, overrides)
    model = build_model(cfg)
    model.train()
    batch = next(iter(build_detection_train_loader(cfg)))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    assert {"loss_cls", "loss_box_reg"} <= set(losses)
    if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":
        assert {"loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total.backward()
    optimizer.step()
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize(
    "config_file,backbone,heads,loss",
    [("configs/COCO-Detection/libra_rcnn_R_50_FPN_1x.yaml", "build_bfp_backbone", "LibraROIHeads", "balanced_l1"),
     ("configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", "build_resnet_fpn_backbone", "StandardROIHeads", "smooth_l1")],
)
def test_paper_settings(config_file, backbone, heads, loss):
    cfg = load_cfg(config_file)
    assert cfg.MODEL.BACKBONE.NAME == backbone and cfg.MODEL.ROI_HEADS.NAME == heads
    assert cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE == loss
    assert cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 512 and cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION == 0.25
    assert cfg.MODEL.LIBRA.SAMPLER.NUM_BINS == 3 and cfg.MODEL.LIBRA.BFP.REFINE_TYPE == "non_local"
    assert cfg.MODEL.LIBRA.BFP.REFINE_LEVEL == 2
    assert (cfg.MODEL.LIBRA.BALANCED_L1.ALPHA, cfg.MODEL.LIBRA.BALANCED_L1.GAMMA) == (0.5, 1.5)
