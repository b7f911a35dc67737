"""Models users train in mmdetection convert, with the config their checkpoint carries.

Each layout is an mmdetection 3.3 config (the reference harness's FashionScenes mirrors in
benchmarks/reference/configs/, changed key by key), built by mmdetection with random weights and
saved as mmengine's runner saves it: ``meta["cfg"]`` holds the config text and
``meta["dataset_meta"]`` the class names. ``python -m libra_rcnn.convert_mmdet`` writes the
weights and a config; the Detectron2 model of that config, with those weights, must compute what
mmdetection's computes (tests/mmdet_reference.py: relative difference <= 1e-4, float32).
"""
from pathlib import Path

import pytest
import torch
import yaml

from detectron2.config import get_cfg

import libra_rcnn
from libra_rcnn.converters import ConversionError, main, read_config_text
from libra_rcnn.converters.mmdet_config_text import read_config_file
from libra_rcnn.converters.mmdet_plan import MmdetConfig

from conftest import REFERENCE_ENV, load_cfg
from mmdet_reference import (  # noqa: F401 (fixtures)
    HARNESS_CONFIGS,
    build_mmdet,
    check_features,
    check_retinanet_head,
    check_rpn_and_box_head,
    image,
    load_d2,
    mmdet_config,
    mmdet_env,
    save_and_convert,
    save_mmdet,
)

GN = dict(type="GN", num_groups=32, requires_grad=True)
FIVE = ("cat", "dog", "boat", "car", "bird")

# name: (mmdetection config, changes with dotted keys, class names)
LAYOUTS = {
    # ResNet-18 (basic blocks) with GN in the backbone and FPN, 64-channel FPN, BFP non-local at
    # P4, 256-d fc: the harness's Libra R-CNN, as trained on FashionScenes.
    "libra-rcnn_r18-gn_fpn64": ("libra_rcnn_R_18_FPN_GN.py", {}, libra_rcnn.FASHION_MNIST_CLASSES),
    # ResNet-34 with trainable SyncBN, a 48-channel FPN with BN, the BFP's conv refinement at P3,
    # an RPN conv of 32 channels with 2 anchor scales, a 4-conv (GN) + 1-fc box head,
    # class-agnostic boxes, 5 classes.
    "libra-rcnn_r34-syncbn_fpn48-bn_4conv1fc-gn": ("libra_rcnn_R_18_FPN_GN.py", {
        "model.backbone.depth": 34,
        "model.backbone.norm_cfg": dict(_delete_=True, type="SyncBN", requires_grad=True),
        "model.neck.0.out_channels": 48,
        "model.neck.0.norm_cfg": dict(_delete_=True, type="BN", requires_grad=True),
        "model.neck.1.in_channels": 48,
        "model.neck.1.refine_type": "conv",
        "model.neck.1.refine_level": 1,
        "model.rpn_head.in_channels": 48,
        "model.rpn_head.feat_channels": 32,
        "model.rpn_head.anchor_generator.scales": [3, 6],
        "model.roi_head.bbox_roi_extractor.out_channels": 48,
        "model.roi_head.bbox_head": dict(
            _delete_=True, type="Shared4Conv1FCBBoxHead", in_channels=48, conv_out_channels=32, norm_cfg=GN,
            fc_out_channels=128, roi_feat_size=7, num_classes=5, reg_class_agnostic=True,
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type="SmoothL1Loss", beta=1.0, loss_weight=1.0)),
    }, FIVE),
    # RetinaNet, ResNet-18 with GN everywhere (head convs without bias, GN on P6 and P7).
    "retinanet_r18-gn_fpn64-gn_head-gn": ("retinanet_R_18_FPN_GN.py", {}, libra_rcnn.FASHION_MNIST_CLASSES),
    # Libra RetinaNet on ResNeXt-50 32x4d with frozen BN, plain FPN, BFP at P6 (refine level 3),
    # 2 scales x 3 ratios per location, 3 classes.
    "libra-retinanet_x50-32x4d-frozen-bn": ("libra_retinanet_R_18_FPN_GN.py", {
        "model.backbone": dict(_delete_=True, type="ResNeXt", depth=50, groups=32, base_width=4, num_stages=4,
                               out_indices=(1, 2, 3), frozen_stages=1, style="pytorch", norm_eval=True,
                               norm_cfg=dict(type="BN", requires_grad=True)),
        "model.neck.0.in_channels": [512, 1024, 2048],
        "model.neck.0.norm_cfg": None,
        "model.neck.1.refine_level": 3,
        "model.bbox_head.norm_cfg": None,
        "model.bbox_head.num_classes": 3,
        "model.bbox_head.anchor_generator.scales_per_octave": 2,
    }, FIVE[:3]),
}  # fmt: skip


@pytest.fixture(scope="module")
def converted(mmdet_env, tmp_path_factory):
    """layout name -> (mmdetection model, converted weights; the written config beside them)."""
    cache = {}

    def get(name):
        if name not in cache:
            config, changes, classes = LAYOUTS[name]
            cfg = mmdet_config(config, changes)
            model = build_mmdet(cfg, seed=10 + len(cache))
            cache[name] = (model, save_and_convert(model, tmp_path_factory.mktemp("layout"), cfg, classes))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_converted_layout_computes_what_mmdetection_computes(name, converted, image, caplog):
    theirs, weights = converted(name)
    ours = load_d2(weights.with_suffix(".yaml"), weights, caplog)
    check_features(name, theirs, ours, image)
    if "retinanet" in name:
        check_retinanet_head(name, theirs, ours, image)
    else:
        check_rpn_and_box_head(name, theirs, ours, image)


def test_the_written_config_names_what_it_mirrors(converted):
    _, weights = converted("libra-rcnn_r34-syncbn_fpn48-bn_4conv1fc-gn")
    text = weights.with_suffix(".yaml").read_text()
    cfg = load_cfg(weights.with_suffix(".yaml"))
    assert cfg.MODEL.WEIGHTS == str(weights)
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.NORM, cfg.MODEL.FPN.NORM) == (34, "SyncBN", "BN")
    assert (cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.RPN.CONV_DIMS) == (48, [32])
    assert (cfg.MODEL.LIBRA.BFP.REFINE_TYPE, cfg.MODEL.LIBRA.BFP.REFINE_LEVEL) == ("conv", 1)
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[12.0, 24.0], [24.0, 48.0], [48.0, 96.0], [96.0, 192.0], [192.0, 384.0]]
    box = cfg.MODEL.ROI_BOX_HEAD
    assert (box.NUM_CONV, box.CONV_DIM, box.NORM, box.NUM_FC, box.FC_DIM) == (4, 32, "GN", 1, 128)
    assert box.CLS_AGNOSTIC_BBOX_REG and (box.BBOX_REG_LOSS_TYPE, box.SMOOTH_L1_BETA) == ("smooth_l1", 1.0)
    assert list(cfg.MODEL.LIBRA.CLASS_NAMES) == list(FIVE) and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 5
    assert (cfg.INPUT.FORMAT, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == ("BGR", 256, 256)
    # Each key names its source; with the config in the checkpoint, nothing is assumed.
    assert "DEPTH: 34  # model.backbone.depth" in text or "DEPTH: 34  # weights:" in text
    assert "NMS_THRESH_TEST: 0.5  # model.test_cfg.rcnn.nms.iou_threshold" in text
    assert "Assumed" not in text
    # The RPN samples anchors as the checkpoint was trained: mmdetection's Libra config bounds them.
    assert (cfg.MODEL.PROPOSAL_GENERATOR.NAME, cfg.MODEL.LIBRA.RPN.NEG_POS_UB) == ("LibraRPN", 5.0)
    assert "NEG_POS_UB: 5.0  # model.train_cfg.rpn.sampler.neg_pos_ub" in text


def test_the_written_config_keeps_an_unbounded_rpn_sampler(mmdet_env, tmp_path):
    config, changes, classes = LAYOUTS["libra-rcnn_r18-gn_fpn64"]
    cfg = mmdet_config(config, {**changes, "model.train_cfg.rpn.sampler.neg_pos_ub": -1})
    weights = save_and_convert(build_mmdet(cfg), tmp_path, cfg, classes)
    written = load_cfg(weights.with_suffix(".yaml"))
    assert (written.MODEL.PROPOSAL_GENERATOR.NAME, written.MODEL.LIBRA.RPN.NEG_POS_UB) == ("RPN", -1.0)


def test_without_a_config_the_assumptions_are_listed(mmdet_env, tmp_path, capsys):
    config, changes, _ = LAYOUTS["retinanet_r18-gn_fpn64-gn_head-gn"]
    model = build_mmdet(mmdet_config(config, changes))
    mmdet_file, out = tmp_path / "bare.pth", tmp_path / "out.pth"
    torch.save(model.state_dict(), mmdet_file)  # a bare state dict: no meta, no config
    assert main([str(mmdet_file), str(out)]) == 0
    printed = capsys.readouterr().out
    text = out.with_suffix(".yaml").read_text()
    for assumed in ("INPUT.FORMAT = 'RGB'", "GroupNorm with 32 groups", "relu_before_extra_convs = False",
                    "MODEL.RETINANET.SCORE_THRESH_TEST = 0.05", "class names: none"):  # fmt: skip
        assert assumed in printed and assumed in text
    # What the weights determine is not assumed: depth, widths, norms present, classes.
    cfg = load_cfg(out.with_suffix(".yaml"))
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.RETINANET.NUM_CLASSES) == (18, 64, 10)


def test_without_a_config_a_libra_rcnn_assumes_the_authors_rpn_sampling(mmdet_env, tmp_path, capsys):
    config, changes, _ = LAYOUTS["libra-rcnn_r18-gn_fpn64"]
    mmdet_file, out = tmp_path / "bare.pth", tmp_path / "out.pth"
    torch.save(build_mmdet(mmdet_config(config, changes)).state_dict(), mmdet_file)
    assert main([str(mmdet_file), str(out)]) == 0
    assert "MODEL.LIBRA.RPN.NEG_POS_UB = 5.0" in capsys.readouterr().out
    cfg = load_cfg(out.with_suffix(".yaml"))
    assert (cfg.MODEL.PROPOSAL_GENERATOR.NAME, cfg.MODEL.LIBRA.RPN.NEG_POS_UB) == ("LibraRPN", 5.0)


@pytest.mark.parametrize(
    "changes,key",
    [({"model.bbox_head.norm_cfg": dict(_delete_=True, type="BN", requires_grad=True)}, "model.bbox_head.norm_cfg = BN"),
     ({"model.neck.norm_cfg": dict(type="GN", num_groups=16, requires_grad=True)}, "model.neck.norm_cfg.num_groups = 16"),
     ({"model.test_cfg.nms": dict(type="soft_nms", iou_threshold=0.5)}, "model.test_cfg.nms.type = 'soft_nms'")],
)  # fmt: skip
def test_what_cannot_be_mirrored_fails_in_one_line_and_writes_nothing(mmdet_env, tmp_path, capsys, changes, key):
    cfg = mmdet_config("retinanet_R_18_FPN_GN.py", changes)
    mmdet_file, out = tmp_path / "mmdet.pth", tmp_path / "out.pth"
    save_mmdet(build_mmdet(cfg), mmdet_file, cfg)
    assert main([str(mmdet_file), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m libra_rcnn.convert_mmdet: error: ") and key in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("out*"))


def test_a_checkpoint_whose_config_entry_is_a_file_name_converts_from_the_weights(mmdet_env, tmp_path, capsys):
    config, changes, classes = LAYOUTS["libra-rcnn_r18-gn_fpn64"]
    model = build_mmdet(mmdet_config(config, changes))
    mmdet_file, out = tmp_path / "named.pth", tmp_path / "out.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"config": "configs/libra_rcnn/libra_rcnn_r18.py"}}, mmdet_file)
    assert main([str(mmdet_file), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "holds 'configs/libra_rcnn/libra_rcnn_r18.py', a file name, not the config's text" in printed
    assert "pass the file itself with --config FILE" in out.with_suffix(".yaml").read_text()
    cfg = load_cfg(out.with_suffix(".yaml"))
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.BACKBONE.NAME) == (18, 10, "build_bfp_backbone")


def test_the_config_file_with_its_base_chain_gives_the_checkpoints_own_config(mmdet_env, converted, tmp_path):
    """--config on the harness's Libra config (a _base_ chain with {{_base_.x}} and _delete_):
    the same Detectron2 config as from the text mmengine stored in the checkpoint."""
    config, _, _ = LAYOUTS["libra-rcnn_r18-gn_fpn64"]
    theirs, with_text = converted("libra-rcnn_r18-gn_fpn64")
    bare, out = tmp_path / "bare.pth", tmp_path / "out.pth"
    torch.save(theirs.state_dict(), bare)
    assert main([str(bare), str(out), "--config", str(HARNESS_CONFIGS / config)]) == 0
    settings = lambda text: sorted(line.split("#")[0].rstrip() for line in text.splitlines()  # noqa: E731
                                   if line.strip() and not line.startswith("#") and "WEIGHTS" not in line and "CLASS_NAMES" not in line)
    assert settings(out.with_suffix(".yaml").read_text()) == settings(with_text.with_suffix(".yaml").read_text())
    assert "--config" in out.with_suffix(".yaml").read_text().splitlines()[1]


def test_the_config_text_is_read_without_running_it():
    variables = read_config_text("a = dict(b=[1, -2.5, (3, 'x')], c=None, d={'e': True})\nf = a\ng = 'x/' + 'y'\n")
    assert variables == {"a": {"b": [1, -2.5, (3, "x")], "c": None, "d": {"e": True}},
                         "f": {"b": [1, -2.5, (3, "x")], "c": None, "d": {"e": True}}, "g": "x/y"}  # fmt: skip
    for text, line in (("import os\n", 1), ("a = 1\nprint(a)\n", 2)):
        with pytest.raises(ConversionError, match=f"line {line}"):
            read_config_text(text)
    # A call is not run: the variable is unreadable, an error only where the converter reads it.
    for text, line in (("a = 1\nb = open('x')\n", 2), ("a = __import__('os')\n", 1)):
        unreadable = MmdetConfig(read_config_text(text))
        with pytest.raises(ConversionError, match=f"line {line}: cannot read"):
            unreadable.get("b" if "b =" in text else "a")


def test_a_config_file_is_read_with_its_base_chain(mmdet_env):
    """The zoo's Libra config: two levels of _base_ files, _delete_, {{_base_.x}}, a comprehension
    in a base file that nothing reads; read as mmengine reads it, nothing run."""
    from mmengine.config import Config

    path = REFERENCE_ENV / "mmdet/.mim/configs/libra_rcnn/libra-faster-rcnn_r50_fpn_1x_coco.py"
    ours, theirs = read_config_file(str(path)), Config.fromfile(str(path)).to_dict()
    for key in ("model", "test_pipeline", "train_dataloader", "test_cfg"):
        assert ours[key] == theirs[key], key
    assert ours["model"]["train_cfg"]["rpn"]["sampler"]["neg_pos_ub"] == 5


def test_mmdetection_2x_config_text_is_read_too(mmdet_env):
    """mmdetection 2.x keeps the config in meta["config"], with img_norm_cfg and
    MultiScaleFlipAug in the test pipeline, and train_cfg / test_cfg inside the model."""
    from libra_rcnn.converters import WeightLayout, config_text, detectron2_settings
    from libra_rcnn.converters.mmdet_layout import FPNLayout, ResNetLayout, RetinaLayout

    text = (
        "img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)\n"
        "data = dict(test=dict(pipeline=[dict(type='LoadImageFromFile'), dict(type='MultiScaleFlipAug', "
        "img_scale=(1000, 600), flip=False, transforms=[dict(type='Resize', keep_ratio=True)])]))\n"
        "model = dict(type='RetinaNet', test_cfg=dict(nms_pre=500, score_thr=0.1, nms=dict(type='nms', "
        "iou_threshold=0.6), max_per_img=50))\n"
    )
    assert config_text({"config": text}) == (text, 'meta["config"]')
    layout = WeightLayout(
        kind="retinanet", bfp=False, refine="none", num_classes=80,
        backbone=ResNetLayout(block="bottleneck", depth=50, groups=1, width_per_group=64, stem_channels=64,
                              stage_channels=[256, 512, 1024, 2048], norm="bn"),
        fpn=FPNLayout(prefix="neck.", first_stage=3, num_lateral=3, channels=256, norm=None, extra="conv", num_extra=2,
                      extra_in_channels=2048),
        retina=RetinaLayout(convs=4, norm=None, anchors=9),
    )  # fmt: skip
    plan = detectron2_settings(layout, read_config_text(text), {"CLASSES": [f"c{i}" for i in range(80)]})
    values = {k: v for k, v, _ in plan.settings}
    assert (values["INPUT.FORMAT"], values["INPUT.MIN_SIZE_TEST"], values["INPUT.MAX_SIZE_TEST"]) == ("RGB", 600, 1000)
    assert (values["MODEL.RETINANET.TOPK_CANDIDATES_TEST"], values["MODEL.RETINANET.SCORE_THRESH_TEST"]) == (500, 0.1)
    assert (values["MODEL.RETINANET.NMS_THRESH_TEST"], values["TEST.DETECTIONS_PER_IMAGE"]) == (0.6, 50)
    assert values["MODEL.LIBRA.CLASS_NAMES"][79] == "c79"


def test_a_written_config_is_plain_yaml_detectron2_reads(converted):
    _, weights = converted("libra-rcnn_r18-gn_fpn64")
    data = yaml.safe_load(Path(weights.with_suffix(".yaml")).read_text())
    assert data["VERSION"] == 2 and data["MODEL"]["BACKBONE"]["NAME"] == "build_bfp_backbone"
    cfg = get_cfg()
    libra_rcnn.add_libra_config(cfg)
    cfg.merge_from_file(str(weights.with_suffix(".yaml")))  # no unknown key, no type error
    assert cfg.MODEL.RESNETS.NORM == "GN" and cfg.MODEL.LIBRA.SAMPLER.BINNING == "mmdet"
