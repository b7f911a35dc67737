"""Training and evaluation entry points on Detectron2's ``DefaultTrainer``.

``train_net.py`` is a thin wrapper over :func:`run`: Detectron2's argument parser,
``launch``, and checks that fail in one line, before any work starts, on a missing config
file, weights file or dataset, or on a config value the project's components refuse.
"""
import logging
import os
import resource
import sys

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultTrainer, HookBase, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .config import add_libra_config

__all__ = ["Trainer", "PeakMemoryHook", "InputError", "build_config", "check_inputs", "setup", "main", "run", "cli"]

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


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` that evaluates every ``DATASETS.TEST`` with ``COCOEvaluator`` and
    logs the peak memory (:class:`PeakMemoryHook`)."""

    def build_hooks(self):
        hooks = super().build_hooks()
        if comm.is_main_process():  # before the PeriodicWriter, which Detectron2 puts last
            hooks.insert(len(hooks) - 1, PeakMemoryHook())
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
    - ``MODEL.WEIGHTS``, when it is a local path (and always with ``--eval-only``), exists;
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
    weights = cfg.MODEL.WEIGHTS
    is_url = "://" in weights
    if args.eval_only and not weights:
        raise InputError("--eval-only needs MODEL.WEIGHTS (a checkpoint file)")
    if weights and not is_url and not os.path.isfile(weights):
        raise InputError(f"MODEL.WEIGHTS file {weights} not found")
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


def setup(args) -> CfgNode:
    """Build the config and run Detectron2's ``default_setup`` (logging, seed, config dump)."""
    cfg = build_config(args)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="libra_rcnn")
    if cfg.MODEL.DEVICE == "cpu":
        logger.info("Running on the CPU (MODEL.DEVICE = cpu; CUDA available: %s)", torch.cuda.is_available())
    return cfg


def main(args):
    """Train, or with ``--eval-only`` evaluate ``MODEL.WEIGHTS``; returns the metrics."""
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(args, prog: str = "train_net.py") -> None:
    """Check the inputs, then ``launch`` :func:`main` on every process.

    A failed check prints one line, ``prog: error: ...``, and exits with status 2.
    """
    try:
        check_inputs(build_config(args), args)
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


def cli(prog: str = "python -m libra_rcnn.engine", argv=None) -> None:
    """Parse Detectron2's command line (``default_argument_parser``) and :func:`run` it."""
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    run(args, prog)


if __name__ == "__main__":
    cli()
