"""Shared fixtures: a tiny Fashion-MNIST scenes dataset and config helpers."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import libra_rcnn
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from libra_rcnn.engine import argument_parser

REPO = Path(__file__).resolve().parents[1]
# The pages a reader follows: the README, the guides, the reports and the benchmark's README.
DOC_PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "docs" / "reports").glob("*.md")),
             REPO / "benchmarks" / "README.md"]  # fmt: skip
CONFIGS = REPO / "configs"
ALL_CONFIGS = sorted(str(p.relative_to(REPO)) for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("Base-"))
# LazyConfigs (Python), without the shared pieces under configs/common.
LAZY_CONFIGS = sorted(str(p.relative_to(REPO)) for p in CONFIGS.rglob("*.py") if "common" not in p.parts)

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

# The tiny split of the fixture below, for train_net.py-style runs of the Libra R-CNN config.
CONFIG = "configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml"
TINY = [
    *SMALL_OVERRIDES,
    "DATASETS.TRAIN", "('tiny_scenes_train',)",
    "DATASETS.TEST", "('tiny_scenes_val',)",
    "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
]  # fmt: skip
# The same for a train_net.py subprocess, which registers the split as fashion_scenes_*.
TINY_CLI = [a.replace("tiny_scenes", "fashion_scenes") for a in TINY]


class FixedPyramid(Backbone):
    """A stand-in FPN: returns given tensors (times a learnable scale, for gradients)."""

    def __init__(self, levels):
        super().__init__()
        self.levels = levels
        self.scale = torch.nn.Parameter(torch.ones(()))
        self._out_features = list(levels)

    def forward(self, x):
        return {k: v * self.scale for k, v in self.levels.items()}

    def output_shape(self):
        # Names given out of stride order on purpose: the BFP sorts by stride.
        strides = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
        return {k: ShapeSpec(channels=v.shape[1], stride=strides[k]) for k, v in reversed(self.levels.items())}


REFERENCE_ENV = REPO / ".venv-bench" / "site-packages"


def require_reference_env():
    """Skip unless benchmarks/setup_reference_env.sh has installed mmdetection; under CI
    (``CI`` set, as .ci/run sets it) fail instead: the tests against the reference must run there."""
    if (REFERENCE_ENV / "mmdet").is_dir():
        return
    message = f"{REFERENCE_ENV} has no mmdet: run benchmarks/setup_reference_env.sh"
    if os.environ.get("CI"):
        pytest.fail(message + " (.ci/run does; tests against mmdetection must not skip in CI)")
    pytest.skip(message)


def args_for(*argv):
    """train_net.py's parsed command line."""
    return argument_parser().parse_args(list(argv))


def train_net_env(datasets_root, **extra) -> dict:
    """The environment of a train_net.py subprocess: ``DETECTRON2_DATASETS=datasets_root``, no
    warnings, and ``extra`` variables."""
    return dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), PYTHONWARNINGS="ignore", **extra)


def train_net(*argv, datasets_root, timeout=600, **extra_env):
    """Run train_net.py in a subprocess (:func:`train_net_env`, ``extra_env`` added)."""
    return subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), *argv], cwd=REPO, env=train_net_env(datasets_root, **extra_env),
        capture_output=True, text=True, timeout=timeout,
    )


def final_weights(out: Path) -> dict:
    """The model tensors of ``out/model_final.pth``."""
    return torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]


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


def architecture(cfg) -> tuple:
    """What decides which of the project's code paths a config's model runs: the meta-architecture
    and its components, their loss types and the options that change the computation (not sizes,
    depths, norms, schedules or data, which change only Detectron2's code). Configs that agree on
    it run the same code of the project."""
    m, libra = cfg.MODEL, cfg.MODEL.LIBRA
    parts = [m.META_ARCHITECTURE, m.BACKBONE.NAME]
    if m.BACKBONE.NAME == "build_bfp_backbone":
        parts += [libra.BFP.FPN_BACKBONE, libra.BFP.REFINE_TYPE]
    if m.META_ARCHITECTURE == "GeneralizedRCNN":
        parts += [m.PROPOSAL_GENERATOR.NAME, libra.RPN.NEG_POS_UB >= 0, m.ROI_HEADS.NAME,
                  m.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE, libra.BALANCED_L1.VARIANT]  # fmt: skip
        if m.ROI_HEADS.NAME == "LibraROIHeads":
            parts += [libra.SAMPLER.POS, libra.SAMPLER.NEG, libra.SAMPLER.BINNING, libra.SAMPLER.FLOOR_THR >= 0]
    else:
        parts += [m.RETINANET.BBOX_REG_LOSS_TYPE, libra.RETINANET.BALANCED_L1.VARIANT]
        if m.META_ARCHITECTURE == "FSAF":
            parts += [libra.FSAF.ANCHOR_BASED, libra.FSAF.SELECTION, libra.FSAF.BOX_LOSS_TYPE]
    return tuple(parts)


def one_per_architecture(config_files) -> list:
    """The first config file (in the given order) of each distinct :func:`architecture`."""
    seen = {}
    for path in config_files:
        seen.setdefault(architecture(load_cfg(path)), path)
    return list(seen.values())


# Two processes, 60 iterations, a checkpoint every 10: the launcher tests' training (torchrun, SLURM).
TWO_PROCESS_TRAINING = ["--config-file", CONFIG, *TINY_CLI, "SOLVER.MAX_ITER", "60", "SOLVER.CHECKPOINT_PERIOD",
                        "10", "SEED", "7", "DATASETS.TEST", "()"]  # fmt: skip


@pytest.fixture(scope="session")
def never_stopped(tiny_scenes, tmp_path_factory):
    """The final weights of :data:`TWO_PROCESS_TRAINING` with Detectron2's launch (2 processes,
    gloo, one thread each, as the launcher tests run them), never stopped: what a run stopped and
    resumed under torchrun or SLURM must equal, bit for bit."""
    out = tmp_path_factory.mktemp("never_stopped") / "out"
    done = train_net("--num-gpus", "2", *TWO_PROCESS_TRAINING, "OUTPUT_DIR", str(out), datasets_root=tiny_scenes,
                     timeout=900, OMP_NUM_THREADS="1")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return final_weights(out)


def assert_same_weights(expected: dict, out: Path) -> int:
    """``out/model_final.pth``'s model tensors equal ``expected``'s (``torch.equal``); returns their number."""
    final = final_weights(out)
    assert final.keys() == expected.keys()
    differ = [k for k in expected if not torch.equal(expected[k], final[k])]
    assert not differ, f"{len(differ)} of {len(final)} tensors differ from the run never stopped, e.g. {differ[:3]}"
    return len(final)


def own_export_project(root: Path, name: str, base_config: str, num_train: int, num_val: int, seed: int,
                       extra: str = "") -> Path:
    """A user's project folder: a labelling tool's COCO export under ``root/data`` (the example
    export, :func:`libra_rcnn.data.tool_export.build_tool_export`) and ``root/NAME.yaml``, which
    inherits ``base_config`` and declares the export as ``NAME_train`` / ``NAME_val`` with paths
    relative to itself (3 classes). ``extra`` is appended to the YAML. Returns the config's path."""
    from libra_rcnn.data.tool_export import build_tool_export

    build_tool_export(str(root / "data"), num_train=num_train, num_val=num_val, seed=seed)
    config = root / f"{name}.yaml"
    config.write_text(f"""_BASE_: "{REPO / base_config}"
DATASETS:
  COCO_INSTANCES: [["{name}_train", "data/annotations/train.json", "data/images"],
                   ["{name}_val", "data/annotations/val.json", "data/images"]]
  TRAIN: ("{name}_train",)
  TEST: ("{name}_val",)
MODEL:
  ROI_HEADS:
    NUM_CLASSES: 3
{extra}""")
    return config
