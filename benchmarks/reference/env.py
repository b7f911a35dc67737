"""The reference environment: mmdetection 3.3 importable, mmcv's compiled ops stood in for.

mmcv-lite (the only mmcv 2.x on PyPI for this platform) ships no ``mmcv._ext``. Of its compiled
ops, training and testing (Libra) Faster R-CNN and (Libra) RetinaNet call two:

- NMS (``ext_module.nms``), for which :class:`TorchvisionOps` calls ``torchvision.ops.nms``
  with mmcv's ``offset`` convention (see :func:`nms`);
- RoIAlign, which the configs send to torchvision's kernel with mmcv's own switch
  ``roi_layer=dict(..., use_torchvision=True)``: mmcv's ``RoIAlign.forward`` then calls
  ``torchvision.ops.roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)``,
  the kernel Detectron2's ``ROIAlignV2`` calls too.

Every other op raises when called, naming itself. tests/test_reference_harness.py checks both
stand-ins against mmcv's kernels as its C++ sources define them.
"""
import importlib.machinery
import os
import sys
import types
from pathlib import Path

import torch
import torchvision

REPO = Path(__file__).resolve().parents[2]
REFERENCE_ENV = REPO / ".venv-bench" / "site-packages"

__all__ = ["REFERENCE_ENV", "TorchvisionOps", "nms", "use_reference_env"]


def nms(bboxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    """mmcv's ``ext_module.nms`` by torchvision: indices of the kept boxes, by decreasing score.

    mmcv's kernel measures widths as ``x2 - x1 + offset`` (``offset=1`` is the legacy "+1"
    pixel convention, 0 in mmdetection 3.x) and drops a box whose IoU with a kept one is
    strictly above ``iou_threshold``, as torchvision's does. Adding ``offset`` to x2 and y2
    makes every width, height and intersection ``offset`` larger, which is mmcv's IoU.

    Args:
        bboxes: (N, 4) float, XYXY_ABS.
        scores: (N,) float.
        iou_threshold: IoU above which the lower-scored box is dropped.
        offset: 0 or 1.

    Returns:
        (K,) int64 indices into ``bboxes``.
    """
    if offset not in (0, 1):
        raise ValueError(f"mmcv's nms takes offset 0 or 1, got {offset!r}")
    if offset:
        bboxes = bboxes + bboxes.new_tensor([0.0, 0.0, 1.0, 1.0])
    return torchvision.ops.nms(bboxes, scores, float(iou_threshold))


class TorchvisionOps(types.ModuleType):
    """Stands in for ``mmcv._ext``: :func:`nms` by torchvision; other ops raise when called.

    mmcv's op modules check at import time that their ops exist (``hasattr``), so every name
    resolves; calling one other than ``nms`` raises ``RuntimeError`` naming it. The module has
    a ``__spec__``, which mmengine's ``Runner.wrap_model`` looks up through ``pkgutil``.
    """

    def __init__(self):
        super().__init__("mmcv._ext")
        self.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
        self.nms = nms

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def op(*args, **kwargs):
            raise RuntimeError(f"mmcv's compiled op {name} is not installed (mmcv-lite) and has no stand-in")

        return op


def use_reference_env(resume_own_checkpoints: bool = False) -> None:
    """Make mmdetection 3.3 importable in this process, with :class:`TorchvisionOps`.

    The reference environment is appended to ``sys.path``, so the project's own packages
    (torch, numpy, OpenCV, pycocotools) take precedence, and all mmdetection modules are
    registered.

    Args:
        resume_own_checkpoints: mmengine calls ``torch.load`` without ``weights_only``, which
            torch >= 2.6 refuses for the runner's own checkpoints (they hold mmengine's
            ``HistoryBuffer``). True sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` for this
            process, for a runner that resumes from files it wrote itself.

    Raises:
        RuntimeError: if ``benchmarks/setup_reference_env.sh`` has not been run.
    """
    if not (REFERENCE_ENV / "mmdet").is_dir():
        raise RuntimeError(f"{REFERENCE_ENV} has no mmdet: run bash benchmarks/setup_reference_env.sh")
    if str(REFERENCE_ENV) not in sys.path:
        sys.path.append(str(REFERENCE_ENV))
    existing = sys.modules.get("mmcv._ext")
    if existing is None or not isinstance(existing, TorchvisionOps):
        sys.modules["mmcv._ext"] = TorchvisionOps()
    if resume_own_checkpoints:
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
