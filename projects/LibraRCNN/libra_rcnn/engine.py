"""Training and evaluation entry points on Detectron2's ``DefaultTrainer``.

``train_net.py`` is a thin wrapper over :func:`run`: Detectron2's argument parser,
``launch``, and checks that fail in one line, before any work starts, on a missing config
file, weights file or dataset, or on a config value the project's components refuse.
Training records are checked before the first step (:mod:`libra_rcnn.data.checks`),
checkpoints are written atomically (:class:`AtomicCheckpointer`), a resumed run's
``metrics.json`` holds each iteration once, and ``--num-gpus N`` also works on a CPU-only
machine (N processes over gloo).
"""
import argparse
import json
import logging
import os
import resource
import sys
import weakref
from typing import Callable, Optional

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    HookBase,
    SimpleTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    launch,
)
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from . import launch as launcher
from .checkpoint import AtomicCheckpointer
from .config import add_libra_config
from .data.checks import DatasetError, check_image_files, load_train_records
from .solver import CLIP_TYPES, FULL_MODEL, build_optimizer

__all__ = [
    "Trainer",
    "PeakMemoryHook",
    "InputError",
    "build_config",
    "check_inputs",
    "check_class_names",
    "truncate_metrics",
    "world_size",
    "check_world_size",
    "resume_under_launcher",
    "launch_checked",
    "argument_parser",
    "setup",
    "main",
    "run",
    "cli",
]

# Meta-architectures whose classes are set by MODEL.RETINANET.NUM_CLASSES.
_ONE_STAGE = ("RetinaNet", "LibraRetinaNet", "FSAF")

logger = logging.getLogger("libra_rcnn")


class InputError(ValueError):
    """A missing file, an unknown dataset or a refused config value, named in the message."""


class PeakMemoryHook(HookBase):
    """Writes the process's peak memory so far, in MiB, as the scalar ``peak_memory_mib``.

    On CUDA it is ``torch.cuda.max_memory_allocated`` (tensors only, the figure Detectron2
    prints as ``max_mem``); on the CPU the peak resident set size of the training process
    (``ru_maxrss``; data-loader workers not included). Both are host-side queries: no sync.
    The value lands in ``metrics.json`` and TensorBoard with the other scalars.
    """

    def after_step(self):
        device = torch.device(self.trainer.cfg.MODEL.DEVICE)
        if device.type == "cuda":
            mib = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        self.trainer.storage.put_scalar("peak_memory_mib", mib, smoothing_hint=False)


def truncate_metrics(path: str, start_iter: int) -> int:
    """Cut a Detectron2 ``metrics.json`` before the first line of iteration >= ``start_iter``.

    A run killed after its last checkpoint has logged iterations that the resumed run logs
    again; a torn last line (killed mid-write) is cut too. The file is truncated in place,
    so a ``JSONWriter`` that already holds it open in append mode writes after the kept part.

    Returns:
        the number of lines kept (0 when there is no file).
    """
    if not os.path.isfile(path):
        return 0
    kept_bytes, kept_lines = 0, 0
    with open(path, "rb") as f:
        for line in f:
            try:
                iteration = json.loads(line)["iteration"]
            except (ValueError, KeyError, TypeError):
                break
            if not line.endswith(b"\n") or iteration >= start_iter:
                break
            kept_bytes += len(line)
            kept_lines += 1
    os.truncate(path, kept_bytes)
    return kept_lines


class Trainer(DefaultTrainer):
    """Detectron2's ``DefaultTrainer`` with:

    - every ``DATASETS.TEST`` evaluated with ``COCOEvaluator``;
    - the peak memory logged (:class:`PeakMemoryHook`);
    - training records checked, bad GT boxes dropped with a logged count
      (:func:`libra_rcnn.data.checks.load_train_records`);
    - atomic checkpoints (:class:`AtomicCheckpointer`);
    - whole-model gradient clipping, ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE: "full_model"``
      (:mod:`libra_rcnn.solver`);
    - ``metrics.json`` cut back to the resumed iteration on ``--resume`` (:func:`truncate_metrics`);
    - the iteration named in every ``FloatingPointError`` (a NaN/Inf loss or prediction);
    - ``DistributedDataParallel`` on the CPU: Detectron2 passes ``device_ids`` to DDP, which
      DDP refuses for a CPU model, so this constructor (otherwise the same steps as
      ``DefaultTrainer.__init__``) leaves them out when ``MODEL.DEVICE`` is the CPU.
    """

    def __init__(self, cfg: CfgNode):
        super(DefaultTrainer, self).__init__()  # TrainerBase: hooks, iteration counters
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        ddp_args = {"device_ids": None} if torch.device(cfg.MODEL.DEVICE).type == "cpu" else {}
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_args)
        trainer_class = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_class(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

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
        (:func:`libra_rcnn.solver.build_optimizer`)."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        if cfg.MODEL.META_ARCHITECTURE in _ONE_STAGE:
            num_classes, key = cfg.MODEL.RETINANET.NUM_CLASSES, "MODEL.RETINANET.NUM_CLASSES"
        else:
            num_classes, key = cfg.MODEL.ROI_HEADS.NUM_CLASSES, "MODEL.ROI_HEADS.NUM_CLASSES"
        return build_detection_train_loader(cfg, dataset=load_train_records(cfg, num_classes, key))

    def build_hooks(self):
        hooks = super().build_hooks()
        if comm.is_main_process():  # before the PeriodicWriter, which Detectron2 puts last
            hooks.insert(len(hooks) - 1, PeakMemoryHook())
        requeue = launcher.requeue_hook(self.checkpointer)
        if requeue is not None:  # SLURM: checkpoint and requeue on the warning signal
            hooks.insert(len(hooks) - 1, requeue)
        return hooks

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str) -> COCOEvaluator:
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_dir)


def build_config(args) -> CfgNode:
    """Detectron2's config with the project's keys, merged with the file and the overrides.

    Falls back to the CPU when ``MODEL.DEVICE`` asks for CUDA and none is available.

    Raises:
        InputError: for a missing config file, or an unknown key or bad value in it.
    """
    if not args.config_file:
        raise InputError("no --config-file given")
    if not os.path.isfile(args.config_file):
        raise InputError(f"config file {args.config_file} not found")
    cfg = get_cfg()
    add_libra_config(cfg)
    try:
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except (KeyError, ValueError, AssertionError, OSError) as e:  # OSError: a missing _BASE_
        raise InputError(f"{args.config_file}: {e}") from e
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def check_inputs(cfg: CfgNode, args) -> None:
    """Check, before any work starts, everything that would otherwise fail late.

    - every dataset in ``DATASETS.TRAIN`` (unless ``--eval-only``), then ``DATASETS.TEST``,
      is registered and, for COCO-format datasets, its annotation file exists;
    - ``MODEL.LIBRA.CLASS_NAMES``, when given, matches every dataset's classes
      (:func:`check_class_names`);
    - ``MODEL.WEIGHTS``, when it is a local path (and always with ``--eval-only``), exists;
    - ``SOLVER.AMP.ENABLED`` only with a CUDA ``MODEL.DEVICE`` (Detectron2's ``AMPTrainer`` is
      CUDA-only: on a CPU it would fail at its first step);
    - ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` is Detectron2's ``value`` / ``norm`` or ``full_model``;
    - the model builds: the project's components refuse bad values with a message naming
      the key (built on the meta device, so this costs no memory).

    Raises:
        InputError: naming the dataset, file or key.
    """
    names = ([] if args.eval_only else list(cfg.DATASETS.TRAIN)) + list(cfg.DATASETS.TEST)
    registered = set(DatasetCatalog.list())
    for name in names:
        if name not in registered:
            raise InputError(f"dataset {name!r} is not registered in DatasetCatalog")
        json_file = MetadataCatalog.get(name).get("json_file")
        if json_file and not os.path.isfile(json_file):
            hint = " (build it: python -m libra_rcnn.data)" if "fashion_scenes" in name else ""
            raise InputError(f"dataset {name!r}: annotation file {json_file} not found{hint}")
    check_class_names(cfg, names)
    weights = cfg.MODEL.WEIGHTS
    is_url = "://" in weights
    if args.eval_only and not weights:
        raise InputError("--eval-only needs MODEL.WEIGHTS (a checkpoint file)")
    if weights and not is_url and not os.path.isfile(weights):
        raise InputError(f"MODEL.WEIGHTS file {weights} not found")
    if not args.eval_only:
        check_world_size(cfg.SOLVER.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH", args)
    if cfg.SOLVER.AMP.ENABLED and torch.device(cfg.MODEL.DEVICE).type != "cuda":
        raise InputError(
            f"SOLVER.AMP.ENABLED = True needs a CUDA device (Detectron2's AMPTrainer) and MODEL.DEVICE is "
            f"{cfg.MODEL.DEVICE!r}{'' if torch.cuda.is_available() else ' (no CUDA on this machine)'}; "
            "set SOLVER.AMP.ENABLED False to train in float32"
        )
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE not in CLIP_TYPES:
        raise InputError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE = {clip.CLIP_TYPE!r} is not allowed; choose one of {list(CLIP_TYPES)}")
    if clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL and not clip.CLIP_VALUE > 0:
        raise InputError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE = {clip.CLIP_VALUE!r} must be > 0 for full-model clipping")
    meta_cfg = cfg.clone()
    meta_cfg.defrost()
    meta_cfg.MODEL.DEVICE = "meta"
    try:
        with torch.device("meta"):
            build_model(meta_cfg)
    except (ValueError, KeyError, AssertionError) as e:
        raise InputError(str(e) or repr(e)) from e
    except Exception as e:  # a module that cannot be built on the meta device: check skipped
        logger.warning("Skipped the model check on the meta device: %r", e)


def check_class_names(cfg: CfgNode, datasets) -> None:
    """``MODEL.LIBRA.CLASS_NAMES``, when given, must be the model's classes and every dataset's.

    A converted model whose classes are in another order than the dataset's would evaluate
    every detection against the wrong class; this stops it before anything runs.

    Raises:
        InputError: naming the key, the dataset and the first class that differs.
    """
    names = list(cfg.MODEL.LIBRA.CLASS_NAMES)
    if not names:
        return
    if cfg.MODEL.META_ARCHITECTURE in _ONE_STAGE:
        num_classes, key = cfg.MODEL.RETINANET.NUM_CLASSES, "MODEL.RETINANET.NUM_CLASSES"
    else:
        num_classes, key = cfg.MODEL.ROI_HEADS.NUM_CLASSES, "MODEL.ROI_HEADS.NUM_CLASSES"
    if len(names) != num_classes:
        raise InputError(f"MODEL.LIBRA.CLASS_NAMES names {len(names)} classes but {key} = {num_classes}")
    for dataset in datasets:
        classes = MetadataCatalog.get(dataset).get("thing_classes")
        if classes is None or list(classes) == names:
            continue
        i = next((i for i, (a, b) in enumerate(zip(names, classes)) if a != b), min(len(names), len(classes)))
        theirs = classes[i] if i < len(classes) else "nothing"
        ours = names[i] if i < len(names) else "nothing"
        raise InputError(
            f"MODEL.LIBRA.CLASS_NAMES differs from dataset {dataset!r}'s classes at index {i}: the model's "
            f"{ours!r}, the dataset's {theirs!r} ({len(names)} vs {len(classes)} classes)"
        )


def setup(args) -> CfgNode:
    """Build the config and run Detectron2's ``default_setup`` (logging, seed, config dump)."""
    cfg = build_config(args)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="libra_rcnn")
    if cfg.MODEL.DEVICE == "cpu":
        logger.info("Running on the CPU (MODEL.DEVICE = cpu; CUDA available: %s)", torch.cuda.is_available())
    return cfg


def main(args):
    """Train, or with ``--eval-only`` evaluate ``MODEL.WEIGHTS``; returns the metrics.

    Before training starts, the training records are checked (:class:`Trainer`) and so are
    the image files of every ``DATASETS.TEST``, so that the final evaluation cannot fail on
    a missing file hours later.

    Raises:
        DatasetError: for data that cannot be trained or evaluated on, naming the record.
    """
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    for name in cfg.DATASETS.TEST:
        check_image_files(DatasetCatalog.get(name), f"DATASETS.TEST {name!r}")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume_under_launcher(args, trainer.checkpointer))
    return trainer.train()


def _main_or_exit(args, prog: str):
    """:func:`main`, with bad data reported in one line and exit status 2 (on every process)."""
    try:
        return main(args)
    except DatasetError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)


def world_size(args, proc: Optional[launcher.LaunchedProcess] = None) -> int:
    """The number of training processes: the launcher's (``proc``, else :func:`launch.detect`:
    torchrun, srun), else ``--num-gpus`` x ``--num-machines`` (Detectron2's ``launch``)."""
    proc = proc or launcher.detect()
    return proc.world_size if proc is not None else getattr(args, "num_gpus", 1) * getattr(args, "num_machines", 1)


def check_world_size(total_batch: int, key: str, args) -> None:
    """The batch must split evenly over the processes (Detectron2's loaders assert it later).

    Raises:
        InputError: naming the key, the batch and the number of processes.
    """
    proc = launcher.detect()
    size = world_size(args, proc)
    if total_batch % size:
        where = f"{proc.launcher}'s world size" if proc else "--num-gpus x --num-machines"
        raise InputError(f"{key} = {total_batch} does not split over {size} processes ({where}); "
                         f"use a multiple of {size}")  # fmt: skip


def resume_under_launcher(args, checkpointer: DetectionCheckpointer) -> bool:
    """Whether to resume although ``--resume`` was not given: under torchrun or srun, when the
    checkpointer's folder holds a complete checkpoint (its ``last_checkpoint`` file, written
    after the checkpoint itself), as after an elastic restart or a requeue. Logs why."""
    proc = launcher.detect()
    if proc is None or args.resume or args.eval_only or not checkpointer.has_checkpoint():
        return args.resume
    logger.info("%s (job %s, restart %d): resuming from %s in %s without --resume", proc.launcher, proc.job,
                proc.restarts, os.path.basename(checkpointer.get_checkpoint_file()), checkpointer.save_dir)  # fmt: skip
    return True


def launch_checked(check: Callable[[], None], main_func: Callable, args, prog: str, main_args: tuple) -> None:
    """Run ``check()``, then ``main_func(*main_args)`` on every process: in this process when a
    launcher (torchrun, srun) started it (:mod:`libra_rcnn.launch`: the process groups set up as
    Detectron2's ``launch`` does), else through Detectron2's ``launch`` (``args.num_gpus``,
    ``num_machines``, ``machine_rank``, ``dist_url``).

    A check that raises :class:`InputError` (or an unusable launcher environment) prints one
    line, ``prog: error: ...``, and exits with status 2 before any process starts.
    """
    connect_timeout = getattr(args, "connect_timeout", launcher.CONNECT_TIMEOUT)
    try:
        proc = launcher.detect()
        check()
        if proc is None and args.num_machines > 1 and args.machine_rank > 0:
            launcher.wait_for_master(args.dist_url, connect_timeout, "--dist-url")
        if proc is not None:
            launcher.init_process_group(proc, connect_timeout=connect_timeout)
    except (InputError, launcher.LaunchError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    if proc is not None:
        main_func(*main_args)
        return
    launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=main_args,
    )


def run(args, prog: str = "train_net.py") -> None:
    """Check the inputs, then ``launch`` :func:`main` on every process (:func:`launch_checked`)."""
    launch_checked(lambda: check_inputs(build_config(args), args), _main_or_exit, args, prog, (args, prog))


def argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` and ``--connect-timeout SECONDS`` (default 300):
    how long a process other than the master waits for the master's address (``--dist-url``
    with ``--machine-rank`` > 0, or SLURM's ``MASTER_ADDR:MASTER_PORT``) before it stops."""
    parser = default_argument_parser(epilog)
    parser.add_argument("--connect-timeout", type=float, default=launcher.CONNECT_TIMEOUT, metavar="SECONDS",
                        help="how long a non-master process waits for the master's address")  # fmt: skip
    return parser


def cli(prog: str = "python -m libra_rcnn.engine", argv=None) -> None:
    """Parse the command line (:func:`argument_parser`) and :func:`run` it."""
    args = argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    run(args, prog)


if __name__ == "__main__":
    cli()
