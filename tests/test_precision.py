"""Low precision: the components in float16 / bfloat16 against float64 (benchmarks/precision.py),
bfloat16 autocast training steps of every FashionScenes architecture, and AMP only where CUDA is.

A component may add at most two units of roundoff of the 16-bit type to what it is given
(bfloat16 2^-8, float16 2^-11); the balanced L1 loss and the non-local block compute in float32
to stay within it (16-bit, they were 8 and 11 units off: benchmarks/results/before/precision.json).
"""
import math

import pytest
import torch

from detectron2.engine import AMPTrainer

from benchmarks.host_syncs import training_batch
from benchmarks.precision import (
    autocast_step,
    balanced_l1_errors,
    binning_mismatches,
    bfp_errors,
    fsaf_loss_errors,
    non_local_errors,
)
from libra_rcnn.config import InputError, build_config
from libra_rcnn.engine import Trainer, check_inputs

from conftest import REPO, TINY, TINY_CLI, args_for, load_cfg, one_per_architecture, train_net

UNIT = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
FASHION = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs/FashionScenes").rglob("*.yaml")
                 if not p.name.startswith("Base-"))  # fmt: skip


@pytest.mark.parametrize("dtype", list(UNIT))
def test_components_add_at_most_two_units_of_roundoff(dtype):
    for component, errors in (("balanced L1", balanced_l1_errors(dtype)), ("BFP", bfp_errors(dtype)),
                              ("FSAF losses", fsaf_loss_errors(dtype))):  # fmt: skip
        worst = max(errors, key=errors.get)
        assert errors[worst] <= 2 * UNIT[dtype], (component, worst, errors[worst])
    errors = non_local_errors(dtype, size=(24, 40))
    assert errors["logit std"] > 5  # logits as large as a trained model's
    assert errors["attention term (output - input)"] <= 2 * UNIT[dtype], errors


def test_under_autocast_the_iou_bins_are_float32s():
    for name, count in binning_mismatches(torch.bfloat16).items():
        if "under autocast" in name:
            assert count == 0, name
        else:  # rounded to 16 bits first, IoUs next to the edges would change bins
            assert count > 0, name


def test_the_balanced_l1_loss_of_16_bit_inputs_is_float32():
    from libra_rcnn import balanced_l1_loss

    x = torch.full((3, 4), 0.01, dtype=torch.bfloat16)
    assert balanced_l1_loss(x, torch.zeros_like(x)).dtype == torch.float32
    assert balanced_l1_loss(x.double(), torch.zeros(3, 4, dtype=torch.float64)).dtype == torch.float64


@pytest.fixture(scope="module")
def batch(tiny_scenes):
    return training_batch("tiny_scenes_train", 2)


@pytest.mark.parametrize("config", one_per_architecture(FASHION))
def test_a_bfloat16_autocast_training_step_of_every_fashion_scenes_architecture_is_finite(config, batch):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(load_cfg(config, ["MODEL.DEVICE", "cpu"]))
    losses = autocast_step(model, batch, torch.bfloat16)  # raises on a non-finite loss or gradient
    assert losses and all(math.isfinite(v) and v >= 0 for v in losses.values())


def test_amp_selects_detectron2s_amp_trainer(tiny_scenes, tmp_path, monkeypatch):
    """With SOLVER.AMP.ENABLED the Trainer steps with AMPTrainer (built here on the CPU; it runs
    on CUDA, which the GPU script exercises)."""
    args = args_for("--config-file", str(REPO / "configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml"), *TINY,
                    "SOLVER.AMP.ENABLED", "True", "OUTPUT_DIR", str(tmp_path))  # fmt: skip
    trainer = Trainer(build_config(args))
    assert type(trainer._trainer) is AMPTrainer


def test_amp_without_cuda_stops_in_one_line(tiny_scenes, tmp_path):
    args = args_for("--config-file", str(REPO / "configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml"), *TINY,
                    "SOLVER.AMP.ENABLED", "True", "OUTPUT_DIR", str(tmp_path))  # fmt: skip
    with pytest.raises(InputError, match=r"SOLVER.AMP.ENABLED = True needs a CUDA device"):
        check_inputs(build_config(args), args)
    run = train_net("--config-file", "configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml", *TINY_CLI,
                    "SOLVER.AMP.ENABLED", "True", "OUTPUT_DIR", str(tmp_path / "out"), datasets_root=tiny_scenes)  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("train_net.py: error: SOLVER.AMP.ENABLED = True needs a CUDA")
    assert "Traceback" not in run.stderr and not (tmp_path / "out").exists()
