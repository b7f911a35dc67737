"""Every config in configs/ builds a model and runs one training step (with small sizes)."""
import re

import pytest
import yaml
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.data import build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from libra_rcnn.ablation import config_settings

from conftest import ALL_CONFIGS, CONFIGS, LAZY_CONFIGS, SMALL_OVERRIDES, architecture, load_cfg, one_per_architecture


def test_configs_are_found():
    assert "configs/COCO-Detection/libra_rcnn_R_50_FPN_1x.yaml" in ALL_CONFIGS
    assert "configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml" in ALL_CONFIGS


# One config of each distinct architecture (conftest.architecture) trains a step; FashionScenes
# first, the cheaper. Every config builds on the meta device, where its components check their
# values; test_each_ablation_config_switches_exactly_its_component shows what else differs.
TRAINED = one_per_architecture(sorted(ALL_CONFIGS, key=lambda p: (not p.startswith("configs/FashionScenes"), p)))


def test_every_architecture_is_trained_once():
    assert len(TRAINED) >= 20 and len({architecture(load_cfg(p)) for p in TRAINED}) == len(TRAINED)
    assert {architecture(load_cfg(p)) for p in ALL_CONFIGS} == {architecture(load_cfg(p)) for p in TRAINED}


@pytest.mark.parametrize("config_file", ALL_CONFIGS)
def test_config_builds_on_the_meta_device(config_file):
    cfg = load_cfg(config_file, ["MODEL.DEVICE", "meta", "MODEL.WEIGHTS", ""])
    with torch.device("meta"):
        model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


@pytest.mark.parametrize("config_file", TRAINED)
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


def _rpn_of(config_file):
    """The proposal generator and its bound, as the config resolves them (None for one-stage models)."""
    if config_file.endswith(".py"):
        model = instantiate(LazyConfig.load(config_file).model)
        rpn = getattr(model, "proposal_generator", None)
        return None if rpn is None else (type(rpn).__name__, getattr(rpn, "neg_pos_ub", -1.0))
    cfg = load_cfg(config_file)
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        return None
    return cfg.MODEL.PROPOSAL_GENERATOR.NAME, cfg.MODEL.LIBRA.RPN.NEG_POS_UB


LIBRA_RCNN_CONFIGS = [p for p in ALL_CONFIGS + LAZY_CONFIGS if re.search(r"/libra[_-](rcnn|faster-rcnn)[^/]*$", p)]
BASELINE_CONFIGS = [p for p in ALL_CONFIGS if re.search(r"/faster[_-]rcnn[^/]*$", p)]


def test_rpn_configs_are_found():
    assert "configs/COCO-Detection/libra_rcnn_R_50_FPN_100ep_LSJ.py" in LIBRA_RCNN_CONFIGS
    assert "configs/COCO-Detection/mmdet/libra-faster-rcnn_r50_fpn_1x_coco.yaml" in LIBRA_RCNN_CONFIGS
    assert "configs/FashionScenes/libra_rcnn_R_18_FPN_GN_giou.yaml" in LIBRA_RCNN_CONFIGS
    assert "configs/COCO-Detection/mmdet/faster-rcnn_r50_fpn_1x_coco.yaml" in BASELINE_CONFIGS
    assert "configs/OwnData/libra_rcnn_tool_export.py" in LIBRA_RCNN_CONFIGS
    assert len(LIBRA_RCNN_CONFIGS) == 13 and len(BASELINE_CONFIGS) == 5


@pytest.mark.parametrize("config_file", LIBRA_RCNN_CONFIGS)
def test_libra_rcnn_trains_with_the_authors_rpn_sampling(config_file):
    assert _rpn_of(config_file) == ("LibraRPN", 5.0)


@pytest.mark.parametrize("config_file", BASELINE_CONFIGS)
def test_faster_rcnn_baselines_keep_detectron2s_rpn(config_file):
    assert _rpn_of(config_file) == ("RPN", -1.0)


def test_one_stage_configs_have_no_rpn():
    one_stage = [p for p in ALL_CONFIGS if re.search(r"/(libra_)?retinanet|fsaf", p)]
    assert len(one_stage) >= 10 and all(_rpn_of(p) is None for p in one_stage)


def _diff(config_file, reference_file):
    """The keys (but OUTPUT_DIR) whose value differs between two configs, with config_file's value."""
    a, b = config_settings(load_cfg(config_file)), config_settings(load_cfg(reference_file))
    return {k: v for k, v in a.items() if v != b[k] and k != "OUTPUT_DIR"}


# The paper's baseline box losses (docs/methods.md#balanced-l1-loss): smooth L1, beta 1/9 in the RPN,
# 1.0 in the RoI head.
PAPER_LOSSES = {"MODEL.RPN.SMOOTH_L1_BETA": 1 / 9, "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": 1.0}
# The RPN sampling of the authors' Libra config (Libra R-CNN's default), and Detectron2's RPN.
RPN_BOUND = {"MODEL.PROPOSAL_GENERATOR.NAME": "LibraRPN", "MODEL.LIBRA.RPN.NEG_POS_UB": 5.0}
RPN_OFF = {"MODEL.PROPOSAL_GENERATOR.NAME": "RPN", "MODEL.LIBRA.RPN.NEG_POS_UB": -1.0}
TABLE2_ROWS = {  # row: (reference config, keys switched on top of it)
    "table2_smooth_l1_a_baseline": ("faster_rcnn", PAPER_LOSSES),
    "table2_smooth_l1_b_iou_sampling": ("faster_rcnn", {**PAPER_LOSSES, "MODEL.ROI_HEADS.NAME": "LibraROIHeads"}),
    "table2_smooth_l1_c_iou_sampling_bfp": ("faster_rcnn", {
        **PAPER_LOSSES, "MODEL.ROI_HEADS.NAME": "LibraROIHeads", "MODEL.BACKBONE.NAME": "build_bfp_backbone"}),
    "table2_smooth_l1_d_balanced_l1": ("libra_rcnn", {**PAPER_LOSSES, **RPN_OFF}),
    "table2_smooth_l1_e_rpn_bound": ("libra_rcnn", PAPER_LOSSES),
    "table2_smooth_l1_a_baseline_rpn_bound": ("faster_rcnn", {**PAPER_LOSSES, **RPN_BOUND}),
    "table2_l1_a_baseline": ("faster_rcnn", {}),
    "table2_l1_b_iou_sampling": ("faster_rcnn", {"MODEL.ROI_HEADS.NAME": "LibraROIHeads"}),
    "table2_l1_c_iou_sampling_bfp": (
        "faster_rcnn", {"MODEL.ROI_HEADS.NAME": "LibraROIHeads", "MODEL.BACKBONE.NAME": "build_bfp_backbone"}),
    "table2_l1_d_balanced_l1": ("libra_rcnn", RPN_OFF),
    "bfp_refine_none": ("libra_rcnn", {"MODEL.LIBRA.BFP.REFINE_TYPE": "none"}),
    "bfp_refine_conv": ("libra_rcnn", {"MODEL.LIBRA.BFP.REFINE_TYPE": "conv"}),
    "bfp_refine_non_local": ("libra_rcnn", {}),
    "sampler_bins_2": ("libra_rcnn", {"MODEL.LIBRA.SAMPLER.NUM_BINS": 2}),
    "sampler_bins_3": ("libra_rcnn", {}),
    "sampler_bins_5": ("libra_rcnn", {"MODEL.LIBRA.SAMPLER.NUM_BINS": 5}),
    "sampler_binning_paper": ("libra_rcnn", {}),
    "sampler_binning_mmdet": ("libra_rcnn", {"MODEL.LIBRA.SAMPLER.BINNING": "mmdet"}),
    "rpn_neg_pos_ub_off": ("libra_rcnn", RPN_OFF),
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
    # Libra RetinaNet's beta is its own key's default: the config does not set it.
    assert (cfg.MODEL.LIBRA.BFP.REFINE_LEVEL, cfg.MODEL.LIBRA.RETINANET.BALANCED_L1.BETA) == (1, 0.11)


def test_config_files_have_no_duplicate_keys():
    """A key given twice in one mapping is silently overwritten by YAML: refuse it."""

    class Strict(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
        twice = sorted({str(k) for k in keys if keys.count(k) > 1})
        assert not twice, f"{node.start_mark}: {twice} given twice"
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    files = sorted(CONFIGS.rglob("*.yaml"))
    assert len(files) > 60
    for path in files:
        yaml.load(path.read_text(), Strict)
