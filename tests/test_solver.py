"""Whole-model gradient clipping (``SOLVER.CLIP_GRADIENTS.CLIP_TYPE: "full_model"``)."""
import math

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.solver import build_optimizer as detectron2_build_optimizer
from detectron2.utils.env import seed_all_rng

from libra_rcnn.config import InputError, build_config
from libra_rcnn.engine import Trainer, check_inputs
from libra_rcnn.engine.solver import with_full_model_gradient_clipping

from conftest import REPO, TINY, args_for, load_cfg

FULL_MODEL = ["SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model"]


def _two_parameter_step(optimizer_for):
    """One SGD step (lr 1) on parameters a, b at 0 with gradients (3, 0) and (0, 4): the update."""
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = optimizer_for([a, b])
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])
    optimizer.step()
    return -a.detach(), -b.detach()


def test_the_whole_gradient_is_scaled_to_the_max_norm_by_hand():
    # Total norm sqrt(3^2 + 4^2) = 5 > 1: both gradients scaled by 1 / 5 (torch adds 1e-6).
    a, b = _two_parameter_step(lambda p: with_full_model_gradient_clipping(torch.optim.SGD(p, lr=1.0), 1.0))
    scale = 1.0 / (5.0 + 1e-6)
    assert torch.allclose(a, torch.tensor([3 * scale, 0.0])) and torch.allclose(b, torch.tensor([0.0, 4 * scale]))
    # Below the max norm nothing changes.
    a, b = _two_parameter_step(lambda p: with_full_model_gradient_clipping(torch.optim.SGD(p, lr=1.0), 10.0))
    assert torch.equal(a, torch.tensor([3.0, 0.0])) and torch.equal(b, torch.tensor([0.0, 4.0]))
    # Detectron2's "norm" clips each parameter alone: both steps become unit length, the direction changes.
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
                         "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "1.0"])  # fmt: skip
    from detectron2.solver.build import maybe_add_gradient_clipping

    a, b = _two_parameter_step(lambda p: maybe_add_gradient_clipping(cfg, torch.optim.SGD(p, lr=1.0)))
    assert torch.allclose(a, torch.tensor([1.0, 0.0]), atol=1e-5) and torch.allclose(b, torch.tensor([0.0, 1.0]), atol=1e-5)


def test_the_coco_fsaf_configs_clip_the_whole_model_at_10():
    for config in ("fsaf_R_50_FPN_1x", "ab_fsaf_R_101_FPN_1x"):
        clip = load_cfg(f"configs/COCO-Detection/{config}.yaml").SOLVER.CLIP_GRADIENTS
        assert (clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE) == (True, "full_model", 10.0, 2.0)


def test_training_steps_apply_gradients_of_at_most_the_max_norm(tiny_scenes, tmp_path):
    """Trainer.build_optimizer: after each step the model's gradients (clipped in place) have a
    total norm of at most CLIP_VALUE, and the optimizer keeps Detectron2's parameter groups."""
    config = REPO / "configs/FashionScenes/ab_fsaf_R_18_FPN_GN.yaml"
    args = args_for("--config-file", str(config), *TINY, *FULL_MODEL, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.5",
                    "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(tmp_path))  # fmt: skip
    cfg = build_config(args)
    seed_all_rng(3)
    trainer = Trainer(cfg)
    plain = cfg.clone()
    plain.defrost()
    plain.SOLVER.CLIP_GRADIENTS.ENABLED = False
    reference = detectron2_build_optimizer(plain, trainer.model)
    assert type(trainer.optimizer).__name__ == "SGDFullModelClip"
    assert len(trainer.optimizer.param_groups) == len(reference.param_groups)
    trainer.resume_or_load(resume=False)
    trainer.train()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    total = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    assert 0 < total <= 0.5 * (1 + 1e-5)
    assert all(math.isfinite(v) for v, _ in trainer.storage.history("total_loss").values())


@pytest.mark.parametrize(
    "overrides,match",
    [(["SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "global"],
      r"SOLVER.CLIP_GRADIENTS.CLIP_TYPE = 'global' is not allowed; choose one of \['value', 'norm', 'full_model'\]"),
     ([*FULL_MODEL, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.0"], r"SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.0 must be > 0")],
)  # fmt: skip
def test_a_bad_clipping_setting_fails_before_training(overrides, match, tiny_scenes, tmp_path):
    args = args_for("--config-file", str(REPO / "configs/FashionScenes/fsaf_R_18_FPN_GN.yaml"), *TINY, *overrides,
                    "OUTPUT_DIR", str(tmp_path))  # fmt: skip
    with pytest.raises(InputError, match=match):
        check_inputs(build_config(args), args)
