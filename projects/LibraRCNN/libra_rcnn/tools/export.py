"""Export a model to TorchScript or ONNX by tracing, as Detectron2's ``tools/deploy/export_model.py``.

    python -m libra_rcnn.export --config-file C --format {torchscript,onnx} --output DIR \\
        [--sample-image PATH] [KEY VALUE ...]

builds the model of config C (with the ``KEY VALUE`` overrides), loads ``MODEL.WEIGHTS`` with
Detectron2's ``DetectionCheckpointer``, wraps it in Detectron2's ``TracingAdapter`` and records
it on one sample image: the first image of ``DATASETS.TEST[0]``, or ``--sample-image``, resized
as at test time. It writes ``DIR/model.ts`` (``torch.jit.trace``) or ``DIR/model.onnx``
(``torch.onnx.export``, opset 17, TorchScript-based exporter, image height and width dynamic).

The exported model takes one image, a float32 (3, H, W) tensor in ``INPUT.FORMAT`` (BGR by
default) of any H and W, and returns the flattened fields of Detectron2's ``Instances`` (see
:func:`traceable_model`): for GeneralizedRCNN models before the final rescaling to the original
image size (as Detectron2's export), for dense detectors (RetinaNet, LibraRetinaNet, FSAF) in
the input image's coordinates. See docs/export.md.
"""
import argparse
import logging
import os
import sys
from typing import List, Optional

import torch
from torch import nn

import detectron2.data.transforms as T
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, DatasetMapper, detection_utils
from detectron2.export import TracingAdapter, dump_torchscript_IR
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.utils.logger import setup_logger

from ..config import EXIT_BAD_INPUT, InputError, build_config, check_weights_file

__all__ = ["FORMATS", "ONNX_OPSET", "traceable_model", "export_model", "sample_image", "main"]

PROG = "python -m libra_rcnn.export"
FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}

logger = logging.getLogger("libra_rcnn.export")


def _rcnn_inference(model: GeneralizedRCNN, inputs):
    # Detectron2's export: GeneralizedRCNN without the final rescaling to (height, width).
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


def traceable_model(model: nn.Module, image: torch.Tensor) -> TracingAdapter:
    """Detectron2's ``TracingAdapter`` of ``model`` for one image, ready to trace or export.

    Args:
        model: a Detectron2 meta-architecture in eval mode (GeneralizedRCNN, or a dense
            detector such as RetinaNet, LibraRetinaNet, FSAF).
        image: float32 (3, H, W) tensor, as a ``DatasetMapper`` gives it at test time.

    Returns:
        The adapter: ``adapter(image)`` returns the fields of the image's ``Instances`` as a
        tuple of tensors, in the order of their names: ``pred_boxes`` (N, 4) float32 XYXY in
        pixels, ``pred_classes`` (N,) int64, ``scores`` (N,) float32. After a call (or a
        trace), ``adapter.outputs_schema(outputs)`` rebuilds ``[{"instances": Instances}]``
        from them; ``adapter.inference_func(model, [{"image": image}])`` is the eager
        model's result in that form.
    """
    inference = _rcnn_inference if isinstance(model, GeneralizedRCNN) else None
    # eval(): the adapter is a new module in training mode, and torch.onnx.export sets every
    # submodule back to the adapter's mode afterwards.
    return TracingAdapter(model, [{"image": image}], inference).eval()


def export_model(adapter: TracingAdapter, image: torch.Tensor, fmt: str, output_dir: str) -> str:
    """Trace ``adapter`` on ``image`` and write ``output_dir/model.ts`` or ``model.onnx``.

    TorchScript: ``torch.jit.trace``, plus Detectron2's ``dump_torchscript_IR`` files. ONNX:
    ``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``), opset
    :data:`ONNX_OPSET`, input ``image`` with dynamic height and width, outputs ``output_0``,
    ``output_1``, ... (the tensors of :func:`traceable_model`) with a dynamic number of
    detections.

    Returns:
        The path of the file written.

    Raises:
        ValueError: for a format not in :data:`FORMATS`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r} is not one of {FORMATS}")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILE_NAMES[fmt])
    if fmt == "torchscript":
        traced = torch.jit.trace(adapter, (image,))
        torch.jit.save(traced, path)
        dump_torchscript_IR(traced, output_dir)
    else:
        with torch.no_grad():
            num_outputs = len(adapter(image))
        output_names = [f"output_{i}" for i in range(num_outputs)]
        dynamic_axes = {"image": {1: "height", 2: "width"}}
        dynamic_axes.update({name: {0: "detections"} for name in output_names})
        torch.onnx.export(
            adapter, (image,), path, input_names=["image"], output_names=output_names,
            dynamic_axes=dynamic_axes, opset_version=ONNX_OPSET, dynamo=False,
        )  # fmt: skip
    logger.info("Inputs schema: %s", adapter.inputs_schema)
    logger.info("Outputs schema: %s", adapter.outputs_schema)
    return path


def sample_image(cfg: CfgNode, path: Optional[str] = None) -> torch.Tensor:
    """The sample input: float32 (3, H, W), resized as at test time.

    Args:
        cfg: the model's config.
        path: an image file; None for the first image of ``DATASETS.TEST[0]``.

    Raises:
        InputError: for an unreadable image, an empty ``DATASETS.TEST`` or an empty or
            unregistered dataset, naming the file or key.
    """
    if path is not None:
        try:
            original = detection_utils.read_image(path, format=cfg.INPUT.FORMAT)
        except Exception as e:  # PIL's OSError / UnidentifiedImageError, FileNotFoundError
            raise InputError(f"--sample-image {path}: cannot read the image ({type(e).__name__}: {e})") from e
        aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        image = aug.get_transform(original).apply_image(original)
        return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
    if not cfg.DATASETS.TEST:
        raise InputError("DATASETS.TEST is empty: give --sample-image or a test dataset")
    name = cfg.DATASETS.TEST[0]
    try:
        records = DatasetCatalog.get(name)
    except Exception as e:  # unregistered (KeyError) or missing files (OSError ...)
        raise InputError(f"DATASETS.TEST {name!r}: cannot load it ({type(e).__name__}: {e})") from e
    if not records:
        raise InputError(f"DATASETS.TEST {name!r} has no images: give --sample-image")
    try:
        return DatasetMapper(cfg, is_train=False)(records[0])["image"].float()
    except Exception as e:
        raise InputError(f"DATASETS.TEST {name!r}: cannot read {records[0].get('file_name')} ({e})") from e


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="Export a model to TorchScript or ONNX by tracing.")
    p.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder for model.ts / model.onnx")
    p.add_argument("--sample-image", metavar="PATH", help="sample input (default: first image of DATASETS.TEST)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """The command: 0 once the model is written; bad input (config file, override, weights,
    sample image, dataset) ends with one line ``python -m libra_rcnn.export: error: ...`` and
    exit status 2."""
    args = parse_args(argv)
    setup_logger(name="libra_rcnn")
    try:
        cfg = build_config(args)
        check_weights_file(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
        image = sample_image(cfg, args.sample_image)
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    model = build_model(cfg)
    DetectionCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    model.eval()
    image = image.to(cfg.MODEL.DEVICE)
    path = export_model(traceable_model(model, image), image, args.format, args.output)
    logger.info("Exported %s (sample input %s) to %s", cfg.MODEL.META_ARCHITECTURE, tuple(image.shape), path)
    print(path)
    return 0
