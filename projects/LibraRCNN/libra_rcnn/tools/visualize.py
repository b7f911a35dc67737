"""Draw a model's predictions on the first images of a dataset into one PNG.

    python -m libra_rcnn.tools.visualize --config-file CONFIG [--dataset NAME] [--num-images 8]
        [--output DIR] [--confidence-threshold 0.5] [KEY VALUE ...]

The flags are those of ``python -m libra_rcnn.predict`` (Detectron2's ``demo.py``): the checkpoint
is ``MODEL.WEIGHTS`` among the overrides (default ``OUTPUT_DIR/model_final.pth``), the dataset
``DATASETS.TEST[0]`` by default. Writes ``DIR/predictions.png`` (default: ``OUTPUT_DIR``) with
Detectron2's ``DefaultPredictor`` and ``Visualizer``; exit status 2 for bad input.
"""
import argparse
import os
import sys
from typing import List, Optional

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import Visualizer

from ..config import EXIT_BAD_INPUT, InputError
from .common import class_metadata, prediction_config

__all__ = ["draw_instances", "draw_predictions", "main"]

PROG = "python -m libra_rcnn.tools.visualize"


def draw_instances(bgr: np.ndarray, instances, metadata, scale: float = 1.0) -> np.ndarray:
    """Detectron2's ``Visualizer`` drawing of ``instances`` on an image.

    Args:
        bgr: (H, W, 3) uint8 image in BGR order (as ``read_image(..., format="BGR")``).
        instances: ``Instances`` on the CPU with ``pred_boxes``, ``scores``, ``pred_classes``.
        metadata: the dataset's ``Metadata``; its ``thing_classes`` name the labels.
        scale: drawing scale of the image.

    Returns:
        (H * scale, W * scale, 3) uint8 RGB image.
    """
    return Visualizer(bgr[:, :, ::-1], metadata, scale=scale).draw_instance_predictions(instances).get_image()


def draw_predictions(cfg, dataset_name: str, output: str, num_images: int = 8, columns: int = 4) -> str:
    """Predict on the first ``num_images`` images of ``dataset_name`` and save a grid PNG.

    Args:
        cfg: a config whose ``MODEL.WEIGHTS`` is the checkpoint to draw.
        dataset_name: a dataset registered in ``DatasetCatalog``.
        output: path of the PNG to write.
        num_images: images in the grid.
        columns: images per row.

    Returns:
        ``output``.
    """
    predictor = DefaultPredictor(cfg)
    metadata = MetadataCatalog.get(dataset_name)
    if not metadata.get("thing_classes"):
        metadata = class_metadata(cfg)
    records = DatasetCatalog.get(dataset_name)[:num_images]
    tiles = []
    for record in records:
        bgr = read_image(record["file_name"], format="BGR")
        instances = predictor(bgr)["instances"].to("cpu")  # scores >= the config's test thresholds
        tiles.append(draw_instances(bgr, instances, metadata, scale=2.0))
    height, width = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    grid = np.full((rows * height, min(columns, len(tiles)) * width, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * height : r * height + tile.shape[0], c * width : c * width + tile.shape[1]] = tile
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    Image.fromarray(grid).save(output)
    return output


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Draw a model's predictions on the first images of a dataset.")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="YAML config of the model")
    parser.add_argument("--dataset", default=None, help="dataset name (default: the config's DATASETS.TEST[0])")
    parser.add_argument("--num-images", type=int, default=8, metavar="N", help="images in the picture (default 8)")
    parser.add_argument("--output", default=None, metavar="DIR", help="folder of predictions.png (default: OUTPUT_DIR)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, metavar="T", help="minimum score (default 0.5)")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="KEY VALUE config overrides, e.g. MODEL.WEIGHTS FILE (default: OUTPUT_DIR/model_final.pth)")
    args = parser.parse_args(argv)
    try:
        cfg = prediction_config(args, args.confidence_threshold)
        dataset = args.dataset or (cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None)
        if dataset not in DatasetCatalog.list():
            raise InputError(f"dataset {dataset!r} (--dataset, else DATASETS.TEST[0]) is not registered in DatasetCatalog")
        if args.num_images < 1:
            raise InputError(f"--num-images {args.num_images} must be >= 1")
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    output = os.path.join(args.output or cfg.OUTPUT_DIR, "predictions.png")
    print(draw_predictions(cfg, dataset, output, args.num_images))
    return 0


if __name__ == "__main__":
    sys.exit(main())
