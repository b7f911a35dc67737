"""What a training or evaluation run checks before any work starts, so that it fails in one line.

- :func:`check_inputs`: the datasets, class names, weights file, batch split, AMP device,
  gradient clipping and the model itself (built on the meta device) of a YAML config;
- :func:`check_model_builds`: the same for any model builder (LazyConfigs too);
- :func:`check_world_size`: the batch splits over the processes a launcher starts.

Each failure is an :class:`~libra_rcnn.config.InputError` naming the dataset, file or key.
"""
import json
import logging
import os
from importlib import metadata
from typing import Callable, Optional

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from ..config import ONE_STAGE, InputError, add_libra_config, check_weights_file, num_classes_key
from ..data.checks import DatasetError
from ..data.coco_json import check_coco_json
from . import launcher
from .solver import CLIP_TYPES, FULL_MODEL

__all__ = ["build_meta_model", "check_inputs", "check_class_names", "check_declared_datasets", "check_model_builds",
           "world_size", "check_world_size"]  # fmt: skip

logger = logging.getLogger("libra_rcnn")


def build_meta_model(cfg: CfgNode) -> torch.nn.Module:
    """The model of a YAML config built on the meta device: its structure, shapes and the
    constructors' checks, without memory or weights."""
    meta_cfg = cfg.clone()
    meta_cfg.defrost()
    meta_cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return build_model(meta_cfg)


def check_model_builds(build: Callable[[], object], what: str = "") -> None:
    """Build a model on the meta device (no memory, no weights) to run its constructors' checks.

    Args:
        build: builds the model (``build_model(cfg)``, ``instantiate(cfg.model)``).
        what: prefixed to the message (``"model: "``).

    Raises:
        InputError: with the constructor's message, for a value a component refuses.
    """
    try:
        with torch.device("meta"):
            build()
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        raise InputError(what + (str(e) or repr(e))) from e
    except Exception as e:  # a module that cannot be built on the meta device: check skipped
        logger.warning("Skipped the model check on the meta device: %r", e)


def check_inputs(cfg: CfgNode, args) -> None:
    """Check, before any work starts, everything that would otherwise fail late.

    - every dataset in ``DATASETS.TRAIN`` (unless ``--eval-only``), then ``DATASETS.TEST``,
      is registered and, for COCO-format datasets, its annotation file exists;
    - ``MODEL.LIBRA.CLASS_NAMES``, when given, matches every dataset's classes
      (:func:`check_class_names`);
    - the annotation files of ``DATASETS.COCO_INSTANCES`` that the run uses hold no unusable
      record, and the training one has the model's number of classes
      (:func:`check_declared_datasets`);
    - ``MODEL.WEIGHTS``, when it is a local path (and always with ``--eval-only``), exists;
    - the batch splits over the processes (:func:`check_world_size`);
    - ``SOLVER.AMP.ENABLED`` only with a CUDA ``MODEL.DEVICE`` (Detectron2's ``AMPTrainer`` is
      CUDA-only: on a CPU it would fail at its first step);
    - ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` is Detectron2's ``value`` / ``norm`` or ``full_model``;
    - a one-stage model (RetinaNet, Libra RetinaNet, FSAF) leaves the RoI box head's
      ``MODEL.LIBRA.BALANCED_L1`` at its defaults: its own are ``MODEL.LIBRA.RETINANET.BALANCED_L1``;
    - the model builds (:func:`check_model_builds`).

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
    check_declared_datasets(cfg, args)
    check_weights_file(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS", "--eval-only" if args.eval_only else "")
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
    _check_one_stage_balanced_l1(cfg)
    check_model_builds(lambda: build_meta_model(cfg))


def _check_one_stage_balanced_l1(cfg: CfgNode) -> None:
    if cfg.MODEL.META_ARCHITECTURE not in ONE_STAGE:
        return
    defaults = get_cfg()
    add_libra_config(defaults)
    for name, value in cfg.MODEL.LIBRA.BALANCED_L1.items():
        if value != defaults.MODEL.LIBRA.BALANCED_L1[name]:
            raise InputError(
                f"MODEL.LIBRA.BALANCED_L1.{name} = {value!r} configures the RoI box head's loss, which "
                f"{cfg.MODEL.META_ARCHITECTURE} has not; set MODEL.LIBRA.RETINANET.BALANCED_L1.{name} instead"
            )


def check_declared_datasets(cfg: CfgNode, args) -> None:
    """The declared datasets (``DATASETS.COCO_INSTANCES``) that the run uses, read before it starts.

    Each annotation file must hold no record that Detectron2 cannot read
    (:func:`libra_rcnn.data.coco_json.check_coco_json`); in training, the first training dataset's
    categories must be as many as the model's classes. With a pycocotools older than 2.0.11,
    whose evaluation reads the file's ``info``, a test file must have one.

    Raises:
        InputError: naming the key, the dataset, the file, the record.
    """
    declared = {name: json_file for name, json_file, _ in cfg.DATASETS.COCO_INSTANCES}
    used = ([] if args.eval_only else list(cfg.DATASETS.TRAIN)) + list(cfg.DATASETS.TEST)
    for name in dict.fromkeys(n for n in used if n in declared):
        try:
            ids, names = check_coco_json(declared[name])
        except DatasetError as e:
            raise InputError(f"dataset {name!r} (DATASETS.COCO_INSTANCES): {e}") from e
        if name in cfg.DATASETS.TEST and _pycocotools_reads_info():
            with open(declared[name], encoding="utf-8") as f:
                if "info" not in json.load(f):
                    raise InputError(f"{declared[name]} has no 'info', which pycocotools < 2.0.11 needs to evaluate; "
                                     "add \"info\": {} to it, or upgrade pycocotools")  # fmt: skip
        MetadataCatalog.get(name).set(thing_classes=names)  # as Detectron2's loader will
        if not args.eval_only and name == cfg.DATASETS.TRAIN[0]:
            num_classes, key = num_classes_key(cfg)
            if len(ids) != num_classes:
                raise InputError(
                    f"dataset {name!r} ({declared[name]}) has {len(ids)} categories but {key} = {num_classes}; "
                    f"set {key} {len(ids)}"
                )


def _pycocotools_reads_info() -> bool:
    try:
        version = tuple(int(p) for p in metadata.version("pycocotools").split(".")[:3])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return version < (2, 0, 11)


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
    num_classes, key = num_classes_key(cfg)
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


def world_size(args, proc: Optional[launcher.LaunchedProcess] = None) -> int:
    """The number of training processes: the launcher's (``proc``, else :func:`launcher.detect`:
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
