"""The LazyConfigs (configs/**/*.py): they build the YAML configs' models, train a step, and
lazy_train_net.py trains and evaluates from one."""
import json
import subprocess
import sys

import pytest
import torch

from detectron2.config import instantiate
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from libra_rcnn import BalancedFeaturePyramid, LibraRetinaNet, LibraROIHeads, LibraRPN
from libra_rcnn.config import load_lazy_config as load_config
from libra_rcnn.engine.lazy import cli

from conftest import LAZY_CONFIGS, REPO, args_for, load_cfg, train_net_env

RCNN_1X = "configs/COCO-Detection/libra_rcnn_R_50_FPN_1x.py"
RETINANET_1X = "configs/COCO-Detection/libra_retinanet_R_50_FPN_1x.py"
LSJ = "configs/COCO-Detection/libra_rcnn_R_50_FPN_100ep_LSJ.py"
COCO_LAZY = [p for p in LAZY_CONFIGS if p.startswith("configs/COCO-Detection/")]


def small_overrides(config_file, train="tiny_scenes_train", test="tiny_scenes_val"):
    """key=value overrides: CPU, 10 classes, 128 px images, batch 2, few RoIs, the tiny dataset."""
    overrides = [
        "train.device=cpu",
        "train.init_checkpoint=''",
        f"dataloader.train.dataset.names={train}",
        f"dataloader.test.dataset.names={test}",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "dataloader.test.mapper.augmentations.0.short_edge_length=128",
        "dataloader.test.mapper.augmentations.0.max_size=128",
    ]
    if "retinanet" in config_file:
        overrides += ["model.num_classes=10"]
    else:
        overrides += [
            "model.roi_heads.num_classes=10",
            "model.roi_heads.batch_size_per_image=64",
            "model.proposal_generator.pre_nms_topk=[200,100]",
            "model.proposal_generator.post_nms_topk=[100,100]",
        ]
    if "LSJ" in config_file:  # ResizeScale to 128 px, then a fixed 128 px crop
        overrides += [
            "dataloader.train.mapper.augmentations.0.target_height=128",
            "dataloader.train.mapper.augmentations.0.target_width=128",
            "dataloader.train.mapper.augmentations.1.crop_size=[128,128]",
        ]
    else:  # from scratch: BatchNorm instead of FrozenBN, whose random weights diverge at once
        overrides += [
            "dataloader.train.mapper.augmentations.0.short_edge_length=[128]",
            "dataloader.train.mapper.augmentations.0.max_size=128",
            "model.backbone.fpn.bottom_up.freeze_at=0",
            "model.backbone.fpn.bottom_up.stem.norm=BN",
            "model.backbone.fpn.bottom_up.stages.norm=BN",
        ]
    return overrides


def load(config_file, overrides=()):
    return load_config(args_for("--config-file", str(REPO / config_file), *overrides))


def test_lazy_configs_are_found():
    # The COCO ones; configs/OwnData's declares a dataset of your own (tests/test_own_data.py).
    assert COCO_LAZY == sorted([RCNN_1X, RETINANET_1X, LSJ])
    assert LAZY_CONFIGS == sorted(COCO_LAZY + ["configs/OwnData/libra_rcnn_tool_export.py"])


@pytest.mark.parametrize("config_file", COCO_LAZY)
def test_lazy_config_instantiates_and_trains_one_step(config_file, tiny_scenes):
    cfg = load(config_file, small_overrides(config_file))
    model = instantiate(cfg.model)
    assert isinstance(model.backbone, BalancedFeaturePyramid)
    assert isinstance(model, LibraRetinaNet) or isinstance(model.roi_heads, LibraROIHeads)
    model.train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    instantiate(cfg.lr_multiplier)
    batch = next(iter(instantiate(cfg.dataloader.train)))
    assert all(max(b["image"].shape[-2:]) <= 128 for b in batch)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    assert {"loss_cls", "loss_box_reg"} <= set(losses)
    total.backward()
    optimizer.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()) if b.requires_grad)


@pytest.mark.parametrize(
    "lazy_file,yaml_file",
    [(RCNN_1X, "configs/COCO-Detection/libra_rcnn_R_50_FPN_1x.yaml"),
     (RETINANET_1X, "configs/COCO-Detection/libra_retinanet_R_50_FPN_1x.yaml")],
)  # fmt: skip
def test_lazy_config_builds_the_yaml_configs_model(lazy_file, yaml_file):
    lazy = instantiate(load(lazy_file).model)
    yaml = build_model(load_cfg(yaml_file, ["MODEL.DEVICE", "cpu"]))
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(lazy) == shapes(yaml)
    assert lazy.backbone.refine_level == yaml.backbone.refine_level and lazy.backbone.refine_type == "non_local"
    if isinstance(yaml, LibraRetinaNet):
        assert lazy.balanced_l1 == yaml.balanced_l1 and lazy.balanced_l1.beta == 0.11
        assert lazy.box_reg_loss_type == yaml.box_reg_loss_type == "balanced_l1"
    else:
        assert vars(lazy.roi_heads.sampler) == vars(yaml.roi_heads.sampler)
        lazy_box, yaml_box = lazy.roi_heads.box_predictor, yaml.roi_heads.box_predictor
        assert lazy_box.balanced_l1 == yaml_box.balanced_l1
        assert lazy_box.box_reg_loss_type == yaml_box.box_reg_loss_type == "balanced_l1"
        assert lazy.roi_heads.mask_on is False
        assert type(lazy.proposal_generator) is type(yaml.proposal_generator) is LibraRPN
        assert lazy.proposal_generator.neg_pos_ub == yaml.proposal_generator.neg_pos_ub == 5.0


def test_component_keys_are_overridable():
    cfg = load(RCNN_1X, ["model.roi_heads.sampler.num_bins=5", "model.backbone.refine_type=conv"])
    model = instantiate(cfg.model)
    assert model.roi_heads.sampler.num_bins == 5 and model.backbone.refine_type == "conv"
    # Interpolated from the RoI heads: a changed batch size reaches the sampler.
    cfg = load(RCNN_1X, ["model.roi_heads.batch_size_per_image=128"])
    assert instantiate(cfg.model.roi_heads.sampler).batch_size_per_image == 128


def test_refused_value_names_the_key():
    cfg = load(RCNN_1X, ["model.roi_heads.sampler.binning=quantile"])
    # A LazyConfig sets constructor arguments: the error names the argument the user wrote.
    with pytest.raises(ValueError, match="^binning = 'quantile' is not allowed"):
        instantiate(cfg.model.roi_heads.sampler)


@pytest.mark.parametrize(
    "argv,message",
    [(["--config-file", "configs/missing.py"], "config file configs/missing.py not found"),
     (["--config-file", RCNN_1X, "model.no_such_key.x=1"], "no_such_key"),
     (["--config-file", RCNN_1X, "model.roi_heads.sampler.num_bins=0"], "model: num_bins = 0 is out of range"),
     (["--config-file", RCNN_1X, "--eval-only", "train.init_checkpoint=''"], "--eval-only needs train.init_checkpoint"),
     (["--config-file", RCNN_1X, "train.init_checkpoint=missing.pth"], "train.init_checkpoint file missing.pth")],
)  # fmt: skip
def test_bad_command_line_fails_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli("lazy_train_net.py", argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lazy_train_net.py: error:") and message in err


def test_lazy_train_net_trains_and_evaluates(tiny_scenes, tmp_path):
    # The tiny split registered under its default names, as a user's DETECTRON2_DATASETS.
    out = tmp_path / "out"
    argv = [
        "--config-file", RCNN_1X,
        *small_overrides(RCNN_1X, "fashion_scenes_train", "fashion_scenes_val"),
        "optimizer.lr=0.002", "train.max_iter=2", "train.log_period=1", f"train.output_dir={out}",
    ]  # fmt: skip
    env = train_net_env(tiny_scenes)
    result = subprocess.run(
        [sys.executable, str(REPO / "lazy_train_net.py"), *argv], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "metrics.json") as f:
        lines = [json.loads(line) for line in f]
    assert [line["iteration"] for line in lines if "total_loss" in line] == [0, 1]
    assert (out / "model_final.pth").is_file()
    # COCOEvaluator ran at the end (AP is NaN when the 2-iteration model scores nothing above 0.05).
    assert "bbox/AP" in lines[-1]
