"""Loading configs for the commands: YAML (:func:`build_config`) and LazyConfig (:func:`load_lazy_config`).

The checks every command makes before it starts live here once: the config file, the device
(a CUDA device on a machine without CUDA falls back to the CPU, with a warning in the log), the
weights file (:func:`check_weights_file`), and which key holds the number of classes
(:func:`num_classes_key`). Each failure is an :class:`InputError` whose message names the file,
key or value; the commands print it in one line and exit with status 2.
"""
import logging
import os
from typing import Tuple

import torch
from detectron2.config import CfgNode, LazyConfig, get_cfg

from .datasets import absolute_instances, register_instances
from .defaults import add_libra_config

__all__ = [
    "InputError",
    "EXIT_BAD_INPUT",
    "ONE_STAGE",
    "build_config",
    "config_dir",
    "load_lazy_config",
    "resolve_device",
    "check_weights_file",
    "num_classes_key",
]

logger = logging.getLogger("libra_rcnn")

# The exit status of every command for bad input (argparse's own for a bad flag).
EXIT_BAD_INPUT = 2
# Meta-architectures whose classes are set by MODEL.RETINANET.NUM_CLASSES.
ONE_STAGE = ("RetinaNet", "LibraRetinaNet", "FSAF")


class InputError(ValueError):
    """A missing file, an unknown dataset or a refused config value, named in the message."""


def _check_config_file(path: str) -> None:
    if not path:
        raise InputError("no --config-file given")
    if not os.path.isfile(path):
        raise InputError(f"config file {path} not found")


def resolve_device(device: str, key: str) -> str:
    """``device``, or ``"cpu"`` when it names CUDA on a machine without CUDA (logged as a warning
    that names ``key``, the config key that asked for it)."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        logger.warning("%s = %r but CUDA is not available on this machine: running on the CPU", key, device)
        return "cpu"
    return device


def build_config(args) -> CfgNode:
    """Detectron2's config with the project's keys, merged with ``args.config_file`` and the
    ``KEY VALUE`` overrides ``args.opts``, frozen; ``MODEL.DEVICE`` through :func:`resolve_device`.

    The datasets of ``DATASETS.COCO_INSTANCES`` are registered, their paths made absolute (see
    :mod:`libra_rcnn.config.datasets`), and ``OUTPUT_DIR`` is made absolute: the ``config.yaml``
    that a run writes into it works from any working directory.

    Raises:
        InputError: for a missing config file, an unknown key or bad value in it, or a declared
            dataset whose files are missing or whose name is taken.
    """
    _check_config_file(args.config_file)
    cfg = get_cfg()
    add_libra_config(cfg)
    try:
        cfg.merge_from_file(args.config_file)
        cfg.DATASETS.COCO_INSTANCES = absolute_instances(cfg.DATASETS.COCO_INSTANCES, config_dir(args.config_file))
        cfg.merge_from_list(list(args.opts))
        cfg.DATASETS.COCO_INSTANCES = absolute_instances(cfg.DATASETS.COCO_INSTANCES, os.getcwd())
        register_instances(cfg.DATASETS.COCO_INSTANCES)
    except (KeyError, ValueError, AssertionError, OSError) as e:  # OSError: a missing _BASE_
        raise InputError(f"{args.config_file}: {e}") from e
    cfg.OUTPUT_DIR = os.path.abspath(cfg.OUTPUT_DIR)
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE, "MODEL.DEVICE")
    cfg.freeze()
    return cfg


def config_dir(config_file: str) -> str:
    """The folder that relative paths in ``config_file`` are resolved against (its own)."""
    return os.path.dirname(os.path.abspath(config_file))


def load_lazy_config(args):
    """The LazyConfig of ``args.config_file`` with the ``key=value`` overrides of ``args.opts``.

    Its top-level ``coco_instances = dict(name=(json_file, image_root), ...)`` (a dict: LazyConfig
    keeps only dicts at the top) are registered as ``DATASETS.COCO_INSTANCES`` are
    (:mod:`libra_rcnn.config.datasets`); ``train.output_dir`` is made absolute.

    ``train.device`` goes through :func:`resolve_device`; on the CPU ``train.amp.enabled`` is
    turned off with a warning (Detectron2's ``AMPTrainer`` needs CUDA; the LSJ configs enable it).

    Raises:
        InputError: for a missing config file, or a config or override that cannot be applied.
    """
    _check_config_file(args.config_file)
    try:
        cfg = LazyConfig.load(args.config_file)
        if "coco_instances" in cfg:
            _absolute_lazy_instances(cfg, config_dir(args.config_file))
        cfg = LazyConfig.apply_overrides(cfg, args.opts)
    except Exception as e:  # a syntax error, a failed import or an override of a missing key
        raise InputError(f"{args.config_file}: {e}") from e
    if "coco_instances" in cfg:
        try:
            register_instances(_absolute_lazy_instances(cfg, os.getcwd()), "coco_instances")
        except ValueError as e:
            raise InputError(f"{args.config_file}: {e}") from e
    cfg.train.output_dir = os.path.abspath(cfg.train.output_dir)
    cfg.train.device = resolve_device(cfg.train.device, "train.device")
    if cfg.train.device == "cpu" and cfg.train.amp.enabled:
        logger.warning("train.amp.enabled = True needs CUDA; training in float32 on the CPU")
        cfg.train.amp.enabled = False
    return cfg


def _absolute_lazy_instances(cfg, base_dir: str):
    """A LazyConfig's ``coco_instances = dict(name=(json_file, image_root), ...)`` with absolute
    paths, written back; returns them as ``[name, json_file, image_root]`` triples."""
    triples = [[name, *paths] for name, paths in cfg.coco_instances.items()]
    triples = absolute_instances(triples, base_dir, "coco_instances")
    cfg.coco_instances = {name: [json_file, image_root] for name, json_file, image_root in triples}
    return triples


def check_weights_file(weights: str, key: str, required_by: str = "") -> None:
    """A local weights file must exist; a URL (``scheme://``) is left to Detectron2's checkpointer.

    Args:
        weights: the path or URL ('' for none).
        key: the config key or flag that gave it (``MODEL.WEIGHTS``, ``train.init_checkpoint``).
        required_by: what needs a checkpoint (``"--eval-only"``), when an empty ``weights`` is an
            error too.

    Raises:
        InputError: naming ``key`` and the file.
    """
    if not weights:
        if required_by:
            raise InputError(f"{required_by} needs {key} (a checkpoint file)")
        return
    if "://" not in weights and not os.path.isfile(weights):
        raise InputError(f"{key} file {weights} not found")


def num_classes_key(cfg: CfgNode) -> Tuple[int, str]:
    """(number of classes, the key that sets it) for the config's meta-architecture:
    ``MODEL.RETINANET.NUM_CLASSES`` for RetinaNet, Libra RetinaNet and FSAF, else
    ``MODEL.ROI_HEADS.NUM_CLASSES``."""
    if cfg.MODEL.META_ARCHITECTURE in ONE_STAGE:
        return cfg.MODEL.RETINANET.NUM_CLASSES, "MODEL.RETINANET.NUM_CLASSES"
    return cfg.MODEL.ROI_HEADS.NUM_CLASSES, "MODEL.ROI_HEADS.NUM_CLASSES"
