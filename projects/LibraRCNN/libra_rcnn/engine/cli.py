"""The command line of ``train_net.py``: Detectron2's ``tools/train_net.py`` with the project's checks.

:func:`cli` parses Detectron2's flags (``default_argument_parser``, plus ``--connect-timeout``),
checks the inputs before any process starts (:func:`libra_rcnn.engine.checks.check_inputs`), then
runs :func:`main` on every process: through Detectron2's ``launch``, or in this process when a
cluster launcher (torchrun, srun) started it (:mod:`libra_rcnn.engine.launcher`). Bad input ends
the command with one line, ``PROG: error: ...``, and exit status 2.
"""
import argparse
import logging
import os
import sys
from typing import Callable, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import EXIT_BAD_INPUT, InputError, build_config
from ..data.checks import DatasetError, check_image_files
from . import launcher
from .checks import check_inputs
from .trainer import Trainer

__all__ = ["argument_parser", "setup", "main", "run", "cli", "launch_checked", "resume_under_launcher"]

logger = logging.getLogger("libra_rcnn")


def setup(args) -> CfgNode:
    """Build the config and run Detectron2's ``default_setup`` (logging, seed, config dump)."""
    cfg = build_config(args)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="libra_rcnn")
    launcher.check_cpus(cfg.DATALOADER.NUM_WORKERS, "DATALOADER.NUM_WORKERS")
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
        sys.exit(EXIT_BAD_INPUT)


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
    launcher (torchrun, srun) started it (:mod:`libra_rcnn.engine.launcher`: the process groups set up as
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
        sys.exit(EXIT_BAD_INPUT)
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

