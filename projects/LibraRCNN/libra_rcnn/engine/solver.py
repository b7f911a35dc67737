"""Whole-model gradient clipping: ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE: "full_model"``.

Detectron2's ``SOLVER.CLIP_GRADIENTS`` clips each parameter's gradient on its own (``"value"``
or ``"norm"``). mmdetection's ``optim_wrapper.clip_grad=dict(max_norm, norm_type)``, which its
FSAF configs set (max_norm 10, docs/methods.md#fsaf), clips the norm of all gradients together,
``torch.nn.utils.clip_grad_norm_`` over every parameter: a large gradient in one layer then
scales down every layer's step, and the direction of the whole update is kept. The type name
``"full_model"`` is the one Detectron2's own projects use for this.
"""
import torch
from detectron2.config import CfgNode
from detectron2.solver import build_optimizer as detectron2_build_optimizer

__all__ = ["FULL_MODEL", "CLIP_TYPES", "with_full_model_gradient_clipping", "build_optimizer"]

FULL_MODEL = "full_model"
CLIP_TYPES = ("value", "norm", FULL_MODEL)


def with_full_model_gradient_clipping(
    optimizer: torch.optim.Optimizer, max_norm: float, norm_type: float = 2.0
) -> torch.optim.Optimizer:
    """Make ``optimizer.step()`` first clip the gradients of all its parameters together.

    Before each step, ``torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)`` scales
    every gradient by ``min(1, max_norm / (total_norm + 1e-6))``, where ``total_norm`` is the
    ``norm_type``-norm of all the optimizer's gradients concatenated. No host-device sync
    (the scale is computed and applied on the device). The optimizer's class is replaced by
    a subclass in place, as Detectron2's ``maybe_add_gradient_clipping`` does, so its state,
    parameter groups and learning-rate schedulers are kept.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        max_norm: the largest total gradient norm (> 0).
        norm_type: the norm's order (2.0: Euclidean; ``inf``: the largest element).

    Returns:
        ``optimizer`` itself.

    Raises:
        ValueError: if ``max_norm`` is not positive (naming ``SOLVER.CLIP_GRADIENTS.CLIP_VALUE``).
    """
    if not max_norm > 0:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE = {max_norm!r} must be > 0 for full-model clipping")
    base = type(optimizer)

    class FullModelGradientClipping(base):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelGradientClipping.__name__ = FullModelGradientClipping.__qualname__ = f"{base.__name__}FullModelClip"
    optimizer.__class__ = FullModelGradientClipping
    return optimizer


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Detectron2's ``build_optimizer``, plus ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE: "full_model"``
    (:func:`with_full_model_gradient_clipping` at ``CLIP_VALUE`` with ``NORM_TYPE``).

    Raises:
        ValueError: for a ``CLIP_TYPE`` other than ``"value"``, ``"norm"``, ``"full_model"``,
            or a ``CLIP_VALUE`` <= 0 with ``"full_model"``, naming the key.
    """
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE not in CLIP_TYPES:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE = {clip.CLIP_TYPE!r} is not allowed; choose one of {list(CLIP_TYPES)}")
    if not (clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL):
        return detectron2_build_optimizer(cfg, model)
    plain = cfg.clone()
    plain.defrost()
    plain.SOLVER.CLIP_GRADIENTS.ENABLED = False  # Detectron2's per-parameter clipping off
    return with_full_model_gradient_clipping(detectron2_build_optimizer(plain, model), clip.CLIP_VALUE, clip.NORM_TYPE)
