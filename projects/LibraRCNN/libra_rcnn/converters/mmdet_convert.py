"""Convert mmdetection 2.x/3.x checkpoints of (Libra) Faster R-CNN and (Libra) RetinaNet.

Usage::

    python -m libra_rcnn.convert_mmdet INPUT.pth OUTPUT.pth

reads an mmdetection checkpoint (a ``state_dict`` with or without ``meta``, or a bare state
dict) and writes two files: ``OUTPUT.pth``, a Detectron2 checkpoint
(``{"model": ..., "__author__": ..., "matching_heuristics": False}``), and ``OUTPUT.yaml``, the
config of the Detectron2 model that computes what the mmdetection model computes, with
``MODEL.WEIGHTS`` pointing at ``OUTPUT.pth``. ``DetectionCheckpointer`` loads the weights into
that model with no missing or unexpected keys (checked before anything is written).

What is converted (docs/pretrained_mmdet.md):

- backbones: ResNet-18/34 (basic blocks), ResNet-50/101/152 and ResNeXt (bottlenecks), with
  BN, SyncBN or GN (frozen BN stays ``FrozenBatchNorm2d``, GN stays trainable);
- necks: an FPN of any width, with or without a norm, and the BFP (``neck.1``) with a
  non-local, conv or no refinement at any refine level;
- heads: RPN + box head with any fc width, shared convs and number of classes, or RetinaNet's
  head with any number of convs, norm and classes, with the anchors of its config.

The pieces: :mod:`.mmdet_checkpoint` reads the file, :mod:`.mmdet_layout` reads what the
weights hold, :mod:`.mmdet_keys` renames them, :mod:`.mmdet_settings` maps the checkpoint's
config (``meta["cfg"]`` of mmengine, ``meta["config"]`` of mmdetection 2.x) to Detectron2's
keys, and :mod:`.yaml_writer` writes them. Without a config, what the weights do not determine is
taken from mmdetection's defaults and every such value is listed in the YAML file and printed.

Whatever cannot be mirrored fails with one line that names the mmdetection key, and nothing is
written (exit status 2). mmdetection 1.x checkpoints (the 2019 model zoo: boxes with the +1
pixel convention, the box head at the top level) are refused with a message saying so.
"""
import argparse
import dataclasses
import os
import sys
from typing import Dict, List, Optional

import torch
from tqdm import tqdm
from detectron2.config import get_cfg

from ..config import EXIT_BAD_INPUT, add_libra_config
from ..engine.checks import build_meta_model
from ..io import atomic_open
from .errors import ConversionError
from .mmdet_checkpoint import config_text, load_mmdet_checkpoint, mmdet_version
from .mmdet_config_text import read_config_file, read_config_text
from .mmdet_keys import convert_state_dict
from .mmdet_layout import weight_layout
from .mmdet_plan import ConfigPlan
from .mmdet_settings import detectron2_settings
from .yaml_writer import write_config

__all__ = ["detectron2_cfg", "convert", "main"]

PROG = "python -m libra_rcnn.convert_mmdet"


def detectron2_cfg(plan: ConfigPlan, weights: str = ""):
    """Detectron2's config (with ``MODEL.LIBRA``) holding ``plan``'s settings."""
    cfg = get_cfg()
    add_libra_config(cfg)
    pairs = []
    for key, value, _ in plan.settings:
        pairs += [key, value]
    cfg.merge_from_list(pairs)
    cfg.MODEL.WEIGHTS = weights
    return cfg


def _config(meta: dict, config_file: Optional[str]):
    """(variables of the mmdetection config or None, where it came from or None, notes): the
    file given, else the text the checkpoint carries; a checkpoint whose config entry holds the
    config's file name rather than its text converts from the weights, with a note that says so."""
    if config_file:
        return read_config_file(config_file), f"--config {config_file}", []
    text, where = config_text(meta)
    if text is None:
        return None, None, []
    if "\n" not in text.strip() and "=" not in text:
        note = (f"{where} holds {text.strip()!r}, a file name, not the config's text: the config is taken from the "
                "weights and mmdetection's defaults (pass the file itself with --config FILE)")  # fmt: skip
        return None, None, [note]
    return read_config_text(text, f"the checkpoint's {where}"), f"the checkpoint's {where}", []


def convert(state: Dict[str, torch.Tensor], meta: dict, config_file: Optional[str] = None):
    """Convert an mmdetection checkpoint's weights and config (``config_file``, an mmdetection
    config file with its ``_base_`` chain, else the one the checkpoint carries).

    Returns:
        (Detectron2 state dict, :class:`~libra_rcnn.converters.mmdet_plan.ConfigPlan`, layout, where the
        config came from or None). The state dict has exactly the keys and shapes of the model
        that the plan's config builds: conv biases that mmdetection leaves out before a norm
        (Detectron2's RetinaNet head has them) are zeros, and ``num_batches_tracked`` buffers
        that the model does not hold are dropped.

    Raises:
        ConversionError: for a layout, setting or key that Detectron2 cannot mirror, naming it.
    """
    layout = weight_layout(state)
    variables, where, notes = _config(meta, config_file)
    plan = detectron2_settings(layout, variables, meta)
    plan.assumptions[:0] = notes
    model, source = convert_state_dict(state, layout, plan.num_ratios, plan.num_scales)
    try:
        expected = {k: v.shape for k, v in build_meta_model(detectron2_cfg(plan)).state_dict().items()}
    except (ValueError, KeyError, AssertionError) as e:
        raise ConversionError(f"the written config would not build: {e}") from e
    for key in [k for k in model if k not in expected]:
        if key.endswith("num_batches_tracked"):
            del model[key]
        else:
            raise ConversionError(f"{source[key]}: Detectron2's model has no {key}")
    for key, shape in expected.items():
        if key in model:
            if model[key].shape != shape:
                raise ConversionError(
                    f"{source[key]}: shape {tuple(model[key].shape)} but Detectron2's {key} has {tuple(shape)}"
                )
            continue
        weight = key[: -len("bias")] + "weight"
        if key.endswith(".bias") and weight in model:  # a conv before a norm: mmdetection has no bias
            model[key] = torch.zeros(shape, dtype=model[weight].dtype)
        elif key.endswith("num_batches_tracked"):
            model[key] = torch.zeros((), dtype=torch.long)
        else:
            raise ConversionError(f"nothing in the checkpoint for Detectron2's {key}")
    return model, plan, layout, where


def main(argv: Optional[List[str]] = None) -> int:
    """The command line: convert ``INPUT OUTPUT``; returns 0, or 2 with the error on stderr."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convert an mmdetection 2.x/3.x (Libra) Faster R-CNN or (Libra) RetinaNet checkpoint to "
        "Detectron2: OUTPUT.pth and its config OUTPUT.yaml.",
    )
    parser.add_argument("input", help="mmdetection checkpoint (.pth)")
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pth); the config goes beside it (.yaml)")
    parser.add_argument("--config", metavar="FILE", help="mmdetection's config file of the checkpoint (its _base_ "
                        "files are read too, nothing is run); default: the config the checkpoint carries")  # fmt: skip
    args = parser.parse_args(argv)
    config_file = os.path.splitext(args.output)[0] + ".yaml"
    # Progress by stage, on a terminal's stderr (none in a pipe or a log): reading a COCO checkpoint
    # and building the model to check the converted keys against take a few seconds each on a CPU.
    progress = tqdm(total=3, desc=f"{PROG}: reading {os.path.basename(args.input)}", file=sys.stderr,
                    bar_format="{desc} [{n}/{total}]", leave=False, disable=None)  # fmt: skip
    try:
        state, meta = load_mmdet_checkpoint(args.input)
        progress.set_description(f"{PROG}: converting {len(state)} tensors and checking them against Detectron2's model")
        progress.update()
        model, plan, layout, where = convert(state, meta, args.config)
        progress.set_description(f"{PROG}: writing {args.output}")
        progress.update()
    except (ConversionError, FileNotFoundError) as e:
        progress.close()
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    version = mmdet_version(meta)
    header = [
        f"Written by python -m libra_rcnn.convert_mmdet from {args.input}",
        f"(mmdetection {'config in ' + where if where else 'checkpoint without a config'}; {version or 'version unknown'}).",
        "Each value names the mmdetection key it mirrors.",
    ]
    with atomic_open(args.output, "wb") as f:
        torch.save({"model": model, "__author__": "mmdetection (libra_rcnn.convert_mmdet)",
                    "matching_heuristics": False}, f)  # fmt: skip
    write_config(config_file, dataclasses.replace(plan, settings=[("MODEL.WEIGHTS", args.output, "the converted weights")]
                                                  + plan.settings), header)  # fmt: skip
    progress.update()
    progress.close()
    print(f"converted {len(state)} mmdetection tensors ({version or 'version unknown'}) into {len(model)} "
          f"Detectron2 tensors: {args.output}")  # fmt: skip
    print(f"config: {config_file} (" + (f"from {where}" if where else "no config in the checkpoint")
          + (f"; {len(plan.assumptions)} values assumed, listed in it" if plan.assumptions else "") + ")")  # fmt: skip
    for line in plan.assumptions:
        print(f"  assumed: {line}")
    print("evaluate it on your COCO export with:")
    print(f"  python train_net.py --config-file {config_file} --eval-only "
          "DATASETS.COCO_INSTANCES \"[['mine_val', 'val.json', 'images']]\" DATASETS.TEST \"('mine_val',)\"")
    return 0
