"""Shared fixtures: a tiny Fashion-MNIST scenes dataset and config helpers."""
import os
from pathlib import Path

import pytest
import torch

import libra_rcnn
from detectron2.config import get_cfg

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
ALL_CONFIGS = sorted(str(p.relative_to(REPO)) for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("Base-"))

# Small sizes that keep every config's training step quick on a CPU.
SMALL_OVERRIDES = [
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", "",
    "MODEL.ROI_HEADS.NUM_CLASSES", "10",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "SOLVER.IMS_PER_BATCH", "2",
]  # fmt: skip


def load_cfg(config_file, overrides=()):
    """Detectron2 config with the project's keys, from a file and KEY VALUE overrides."""
    cfg = get_cfg()
    libra_rcnn.add_libra_config(cfg)
    cfg.merge_from_file(str(REPO / config_file))
    cfg.merge_from_list(list(overrides))
    return cfg


@pytest.fixture(scope="session")
def tiny_scenes(tmp_path_factory):
    """A tiny scenes dataset (8 train, 4 val images of 128 px) registered as ``tiny_scenes_*``.

    Returns the ``DETECTRON2_DATASETS``-style root folder (holding ``fashion_scenes/``).
    """
    root = tmp_path_factory.mktemp("datasets")
    libra_rcnn.build_fashion_scenes(str(root / "fashion_scenes"), num_train=8, num_val=4, seed=3, size=128)
    libra_rcnn.register_fashion_scenes(str(root / "fashion_scenes"), prefix="tiny_scenes")
    return root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
