"""Training infrastructure on Detectron2's engine: the trainer, its hooks and checks, atomic
checkpoints, the training position restored exactly on resume (:mod:`.position`), whole-model
gradient clipping, cluster launchers, the command line of
``train_net.py`` (:mod:`.cli`) and of ``lazy_train_net.py`` (:mod:`.lazy`)."""
from .checkpoint import AtomicCheckpointer
from .checks import check_class_names, check_inputs, check_model_builds, check_world_size, world_size
from .cli import argument_parser, cli, launch_checked, main, resume_under_launcher, run, setup
from .hooks import PeakMemoryHook, truncate_metrics
from .trainer import Trainer, ddp_kwargs

__all__ = [
    "AtomicCheckpointer",
    "Trainer",
    "ddp_kwargs",
    "PeakMemoryHook",
    "truncate_metrics",
    "check_inputs",
    "check_class_names",
    "check_model_builds",
    "check_world_size",
    "world_size",
    "argument_parser",
    "setup",
    "main",
    "run",
    "cli",
    "launch_checked",
    "resume_under_launcher",
]
