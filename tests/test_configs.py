"""Every config in configs/ builds a model and runs one training step (with small sizes)."""
import pytest
import torch

from detectron2.data import build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from libra_rcnn.ablation import config_settings

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
    anchor_free = cfg.MODEL.META_ARCHITECTURE == "FSAF"
    if not anchor_free or cfg.MODEL.LIBRA.FSAF.ANCHOR_BASED:
        assert {"loss_cls", "loss_box_reg"} <= set(losses)
    if anchor_free:
        assert {"loss_af_cls", "loss_af_box"} <= set(losses)
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


def _diff(config_file, reference_file):
    """The keys (but OUTPUT_DIR) whose value differs between two configs, with config_file's value."""
    a, b = config_settings(load_cfg(config_file)), config_settings(load_cfg(reference_file))
    return {k: v for k, v in a.items() if v != b[k] and k != "OUTPUT_DIR"}


# The paper's baseline box losses (METHODS.md §4): smooth L1, beta 1/9 in the RPN, 1.0 in the RoI head.
PAPER_LOSSES = {"MODEL.RPN.SMOOTH_L1_BETA": 1 / 9, "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": 1.0}
TABLE2_ROWS = {  # row: (reference config, keys switched on top of it)
    "table2_smooth_l1_a_baseline": ("faster_rcnn", PAPER_LOSSES),
    "table2_smooth_l1_b_iou_sampling": ("faster_rcnn", {**PAPER_LOSSES, "MODEL.ROI_HEADS.NAME": "LibraROIHeads"}),
    "table2_smooth_l1_c_iou_sampling_bfp": ("faster_rcnn", {
        **PAPER_LOSSES, "MODEL.ROI_HEADS.NAME": "LibraROIHeads", "MODEL.BACKBONE.NAME": "build_bfp_backbone"}),
    "table2_smooth_l1_d_balanced_l1": ("libra_rcnn", PAPER_LOSSES),
    "table2_l1_a_baseline": ("faster_rcnn", {}),
    "table2_l1_b_iou_sampling": ("faster_rcnn", {"MODEL.ROI_HEADS.NAME": "LibraROIHeads"}),
    "table2_l1_c_iou_sampling_bfp": (
        "faster_rcnn", {"MODEL.ROI_HEADS.NAME": "LibraROIHeads", "MODEL.BACKBONE.NAME": "build_bfp_backbone"}),
    "table2_l1_d_balanced_l1": ("libra_rcnn", {}),
    "bfp_refine_none": ("libra_rcnn", {"MODEL.LIBRA.BFP.REFINE_TYPE": "none"}),
    "bfp_refine_conv": ("libra_rcnn", {"MODEL.LIBRA.BFP.REFINE_TYPE": "conv"}),
    "bfp_refine_non_local": ("libra_rcnn", {}),
    "sampler_bins_2": ("libra_rcnn", {"MODEL.LIBRA.SAMPLER.NUM_BINS": 2}),
    "sampler_bins_3": ("libra_rcnn", {}),
    "sampler_bins_5": ("libra_rcnn", {"MODEL.LIBRA.SAMPLER.NUM_BINS": 5}),
    "sampler_binning_paper": ("libra_rcnn", {}),
    "sampler_binning_mmdet": ("libra_rcnn", {"MODEL.LIBRA.SAMPLER.BINNING": "mmdet"}),
    "rpn_neg_pos_ub_5": ("libra_rcnn", {"MODEL.PROPOSAL_GENERATOR.NAME": "LibraRPN", "MODEL.LIBRA.RPN.NEG_POS_UB": 5.0}),
}  # fmt: skip
FAMILIES = {"COCO-Detection": "R_50_FPN_1x", "FashionScenes": "R_18_FPN_GN"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("row", sorted(TABLE2_ROWS))
def test_each_ablation_config_switches_exactly_its_component(family, row):
    reference, switched = TABLE2_ROWS[row]
    config = f"configs/{family}/ablation/{row}.yaml"
    assert _diff(config, f"configs/{family}/{reference}_{FAMILIES[family]}.yaml") == switched
    assert load_cfg(config).OUTPUT_DIR.endswith(f"ablation/{row}")


def test_fashion_scenes_detectors_share_one_schedule():
    files = [p for p in ALL_CONFIGS if p.startswith("configs/FashionScenes/")]
    keys = ("SOLVER.MAX_ITER", "SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR", "SOLVER.LR_SCHEDULER_NAME", "SEED")
    schedules = {tuple(config_settings(load_cfg(f))[k] for k in keys) for f in files}
    assert schedules == {(800, 4, 0.02, "WarmupCosineLR", 7)}


@pytest.mark.parametrize(
    "config_file,switched",
    [("configs/FashionScenes/libra_retinanet_R_18_FPN_GN.yaml",
      {"MODEL.META_ARCHITECTURE": "LibraRetinaNet", "MODEL.BACKBONE.NAME": "build_bfp_backbone",
       "MODEL.RETINANET.BBOX_REG_LOSS_TYPE": "balanced_l1"}),
     ("configs/FashionScenes/retinanet_R_18_FPN_GN_giou.yaml", {"MODEL.RETINANET.BBOX_REG_LOSS_TYPE": "giou"})],
)  # fmt: skip
def test_fashion_scenes_retinanet_variants(config_file, switched):
    assert _diff(config_file, "configs/FashionScenes/retinanet_R_18_FPN_GN.yaml") == switched
    cfg = load_cfg(config_file)
    assert (cfg.MODEL.LIBRA.BFP.REFINE_LEVEL, cfg.MODEL.LIBRA.BALANCED_L1.BETA) == (1, 0.11)
