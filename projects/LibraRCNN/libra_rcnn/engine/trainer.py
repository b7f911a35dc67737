"""Detectron2's ``DefaultTrainer`` with the project's checks, checkpoints and statistics."""
import contextlib
import functools
import logging
import os
import weakref

import torch
import detectron2.engine.defaults as d2_defaults
from detectron2.config import CfgNode
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

from ..config import num_classes_key
from ..data.checks import load_train_records
from ..data.exact_order import build_exact_train_loader
from . import launcher
from .checkpoint import AtomicCheckpointer
from .hooks import InferenceTimer, LossCurves, PeakMemoryHook, truncate_metrics
from .position import TrainingPosition, resumable_writers
from .solver import build_optimizer

__all__ = ["Trainer", "ddp_kwargs"]

logger = logging.getLogger("libra_rcnn")


def ddp_kwargs(device: str) -> dict:
    """Keyword arguments for Detectron2's ``create_ddp_model`` on ``device``: on the CPU
    ``device_ids=None``, since ``DistributedDataParallel`` refuses device ids for a CPU model
    and Detectron2 passes ``[local rank]`` unless told otherwise."""
    return {"device_ids": None} if torch.device(device).type == "cpu" else {}


@contextlib.contextmanager
def _cpu_processes_ddp(device: str):
    """While ``DefaultTrainer``'s constructor runs, its ``create_ddp_model`` gets
    :func:`ddp_kwargs` (on the CPU only; elsewhere nothing changes). The constructor wraps the
    model in DDP with fixed arguments, and offers no hook in between."""
    extra = ddp_kwargs(device)
    if not extra or comm.get_world_size() == 1:
        yield
        return
    original = d2_defaults.create_ddp_model
    d2_defaults.create_ddp_model = functools.partial(original, **extra)
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class Trainer(DefaultTrainer):
    """Detectron2's ``DefaultTrainer`` with:

    - every ``DATASETS.TEST`` evaluated with ``COCOEvaluator``;
    - the peak memory logged (:class:`PeakMemoryHook`);
    - training records checked, bad GT boxes dropped with a logged count
      (:func:`libra_rcnn.data.checks.load_train_records`);
    - atomic checkpoints (:class:`AtomicCheckpointer`);
    - whole-model gradient clipping, ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE: "full_model"``
      (:mod:`libra_rcnn.engine.solver`);
    - ``metrics.json`` cut back to the resumed iteration on ``--resume`` (:func:`truncate_metrics`),
      and TensorBoard's events too (:func:`~libra_rcnn.engine.position.resumable_writers`);
    - exact resume: the training batches of an
      :class:`~libra_rcnn.data.exact_order.ExactOrderLoader`, and the random generators seeded
      per iteration, restored from the checkpoint (:class:`~libra_rcnn.engine.position.TrainingPosition`);
    - the iteration named in every ``FloatingPointError`` (a NaN/Inf loss or prediction);
    - ``DistributedDataParallel`` on the CPU (:func:`ddp_kwargs`).

    Its constructor is ``DefaultTrainer``'s; the checkpointer it makes is replaced, with the
    same arguments, by an :class:`AtomicCheckpointer` in :meth:`build_hooks`, which the
    constructor calls next, before any hook holds it.
    """

    def __init__(self, cfg: CfgNode):
        with _cpu_processes_ddp(cfg.MODEL.DEVICE):
            super().__init__(cfg)

    def run_step(self):
        """Detectron2's step; a ``FloatingPointError`` raised without the iteration gets it.

        Detectron2 names the iteration when the loss is not finite, but not when the RPN's
        boxes or scores are (its "Training has diverged" error); both then name it.
        """
        try:
            super().run_step()
        except FloatingPointError as e:
            if "iteration" in str(e):
                raise
            raise FloatingPointError(f"{e} (at iteration={self.iter})") from e

    def resume_or_load(self, resume: bool = True):
        super().resume_or_load(resume=resume)
        if resume and self.start_iter > 0 and comm.is_main_process():
            kept = truncate_metrics(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"), self.start_iter)
            logger.info("Resuming at iteration %d; kept %d lines of metrics.json", self.start_iter, kept)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """Detectron2's optimizer, with ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE: "full_model"`` too
        (:func:`libra_rcnn.engine.solver.build_optimizer`)."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """The checked training records (:func:`load_train_records`) in an
        :class:`~libra_rcnn.data.exact_order.ExactOrderLoader`, Detectron2's ``DatasetMapper``,
        ``SOLVER.IMS_PER_BATCH``, ``DATALOADER.ASPECT_RATIO_GROUPING`` and ``NUM_WORKERS``: the
        order of Detectron2's ``TrainingSampler``, restored exactly on resume. Another
        ``DATALOADER.SAMPLER_TRAIN`` gets Detectron2's loader, whose position is not restored."""
        records = load_train_records(cfg, *num_classes_key(cfg))
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning("DATALOADER.SAMPLER_TRAIN %s: Detectron2's loader, whose position a resume does not "
                           "restore (TrainingSampler's is)", cfg.DATALOADER.SAMPLER_TRAIN)  # fmt: skip
            return build_detection_train_loader(cfg, dataset=records)
        return build_exact_train_loader(records, mapper=DatasetMapper(cfg, True), total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
                                        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
                                        num_workers=cfg.DATALOADER.NUM_WORKERS)  # fmt: skip

    def build_writers(self):
        """Detectron2's writers, TensorBoard's cut back to the first iteration of a resumed run."""
        return resumable_writers(self.cfg.OUTPUT_DIR, self.max_iter, weakref.proxy(self))

    def build_hooks(self):
        self.checkpointer = AtomicCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        hooks = [TrainingPosition(), *super().build_hooks()]
        if comm.is_main_process():  # before the PeriodicWriter, which Detectron2 puts last
            hooks.insert(len(hooks) - 1, PeakMemoryHook())
            hooks.append(LossCurves(self.cfg.OUTPUT_DIR))  # after it: it writes the last scalars
        requeue = launcher.requeue_hook(self.checkpointer)
        if requeue is not None:  # SLURM: checkpoint and requeue on the warning signal
            hooks.insert(len(hooks) - 1, requeue)
        return hooks

    @classmethod
    def test(cls, cfg: CfgNode, model, evaluators=None):
        """Detectron2's evaluation of every ``DATASETS.TEST``, plus the inference time per image
        (:class:`InferenceTimer`) as ``results["inference"]["s_per_image"]``, which lands in
        ``metrics.json`` as ``inference/s_per_image`` when the evaluation runs in training."""
        timed = InferenceTimer(model)
        results = super().test(cfg, timed, evaluators)
        if timed.passes:
            results = {**results, "inference": {"s_per_image": timed.seconds_per_image()}}
        return results

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str) -> COCOEvaluator:
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_dir)
