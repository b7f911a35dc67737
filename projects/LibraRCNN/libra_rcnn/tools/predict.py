"""Run a trained model on your own images, as Detectron2's ``demo/demo.py``.

    python -m libra_rcnn.predict --config-file CONFIG --input PATH [PATH ...] --output DIR
        [--confidence-threshold 0.5] [KEY VALUE ...]

``PATH`` is an image file, a folder (its image files, by extension, not recursive) or a glob
pattern (quote it: ``"photos/*.jpg"``). The checkpoint is ``MODEL.WEIGHTS`` among the trailing
``KEY VALUE`` overrides, as in Detectron2 (default: ``OUTPUT_DIR/model_final.pth``). Writes into
``DIR``:

- one picture per image, with the detections drawn by Detectron2's ``Visualizer``, under the
  image's file name (``_1``, ``_2``... added where two inputs share a name);
- ``predictions.json``: the detections in COCO's results format, one object per detection:
  ``image_id`` (the image's position in the input list), ``file_name``, ``category_id`` (the
  dataset's category id where the config's ``DATASETS.TEST[0]`` maps them, as COCOEvaluator
  writes them; else the model's class index), ``category_name``, ``bbox`` ``[x, y, w, h]`` in
  pixels of the original image, and ``score``.

Prediction runs through Detectron2's ``DefaultPredictor`` (the config's test resizing and
format), on the GPU when there is one (``MODEL.DEVICE`` falls back to the CPU otherwise).
A progress bar counts the images. A file that cannot be read as an image is reported on one
line, ``python -m libra_rcnn.predict: error: cannot read FILE: REASON; skipped``, and the rest go on.

Exit status: 0 when every image was predicted, 1 when some were skipped, 2 for bad arguments
(missing config or weights, no input images).
"""
import argparse
import glob
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.evaluation.coco_evaluation import instances_to_coco_json

from ..config import EXIT_BAD_INPUT, InputError
from ..io import atomic_open
from .common import class_metadata, dataset_category_ids, prediction_config
from .visualize import draw_instances

__all__ = ["IMAGE_EXTENSIONS", "expand_inputs", "predict_images", "main"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PROG = "python -m libra_rcnn.predict"


def expand_inputs(paths: Sequence[str]) -> List[str]:
    """The image files named by ``paths``: files as given, folders' image files, globs' matches.

    Folders and globs are sorted by name; a file listed twice is kept once.

    Raises:
        InputError: naming a path that is neither a file, a folder nor a glob with matches.
    """
    files: List[str] = []
    for path in paths:
        if os.path.isdir(path):
            names = sorted(os.listdir(path))
            found = [os.path.join(path, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(path):
            found = [path]
        else:
            found = sorted(p for p in glob.glob(os.path.expanduser(path)) if os.path.isfile(p))
            if not found:
                raise InputError(f"--input {path}: no such file or folder, and no file matches it as a glob")
        files += [f for f in found if f not in files]
    return files


def _output_name(path: str, used: Dict[str, int]) -> str:
    """The input's file name, with ``_k`` before the extension if an earlier input had it."""
    name = os.path.basename(path)
    count = used.get(name, 0)
    used[name] = count + 1
    if count == 0:
        return name
    stem, ext = os.path.splitext(name)
    return f"{stem}_{count}{ext}"


def predict_images(cfg, files: Sequence[str], output_dir: str, confidence_threshold: float = 0.5):
    """Predict, draw and collect the detections of every image in ``files``.

    Args:
        cfg: a frozen config whose ``MODEL.WEIGHTS`` is the checkpoint.
        files: image paths.
        output_dir: folder for the drawn pictures and ``predictions.json`` (created).
        confidence_threshold: detections scoring below it are dropped.

    Returns:
        (detections, skipped): the COCO results-format dicts written to
        ``predictions.json``, and the ``(file, reason)`` pairs of the files that were skipped.
    """
    os.makedirs(output_dir, exist_ok=True)
    predictor = DefaultPredictor(cfg)
    metadata = class_metadata(cfg)
    names = list(metadata.get("thing_classes", []))
    category_ids = dataset_category_ids(metadata)
    detections, skipped, used = [], [], {}
    for image_id, path in enumerate(tqdm(files, desc=PROG, unit="image", file=sys.stderr)):
        try:
            bgr = read_image(path, format="BGR")
        except Exception as e:  # PIL's UnidentifiedImageError; OSError: no permission, truncated, ...
            if isinstance(e, UnidentifiedImageError):
                reason = "not an image in a format PIL reads, or damaged"
            else:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            tqdm.write(f"{PROG}: error: cannot read {path}: {reason}; skipped", file=sys.stderr)
            skipped.append((path, reason))
            continue
        instances = predictor(bgr)["instances"].to("cpu")
        instances = instances[instances.scores >= confidence_threshold]
        out = os.path.join(output_dir, _output_name(path, used))
        Image.fromarray(draw_instances(bgr, instances, metadata)).save(out)
        for det in instances_to_coco_json(instances, image_id):  # bbox XYWH, category_id = class index
            cls = det["category_id"]
            det["category_id"] = category_ids.get(cls, cls)
            det["category_name"] = names[cls] if cls < len(names) else str(cls)
            det["file_name"] = path
            detections.append(det)
    with atomic_open(os.path.join(output_dir, "predictions.json")) as f:
        json.dump(detections, f)
    return detections, skipped


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Detect objects in your own images and draw them."
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="YAML config of the model")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH", help="image files, folders or globs")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for pictures and predictions.json")
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, metavar="T", help="minimum score (default 0.5)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="KEY VALUE config overrides, e.g. MODEL.WEIGHTS FILE (default: OUTPUT_DIR/model_final.pth)")
    args = parser.parse_args(argv)
    try:
        cfg = prediction_config(args, args.confidence_threshold)
        files = expand_inputs(args.input)
        if not files:
            raise InputError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in --input {' '.join(args.input)}")
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    detections, skipped = predict_images(cfg, files, args.output, args.confidence_threshold)
    done = len(files) - len(skipped)
    print(
        f"{done} images predicted ({len(detections)} detections), {len(skipped)} skipped; "
        f"wrote {os.path.join(args.output, 'predictions.json')} on {cfg.MODEL.DEVICE}"
    )
    return 1 if skipped else 0

