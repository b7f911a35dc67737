"""Draw a model's predictions on the first images of a dataset into one PNG.

    python -m libra_rcnn.visualize --config-file CONFIG [--weights model_final.pth]
        [--output predictions.png] [--dataset fashion_scenes_val] [--num-images 8] [KEY VALUE ...]

Uses Detectron2's ``DefaultPredictor`` and ``Visualizer``.
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

__all__ = ["draw_instances", "draw_predictions"]


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


def draw_predictions(
    cfg, dataset_name: str, output: str, num_images: int = 8, columns: int = 4, score_thresh: float = 0.5
) -> str:
    """Predict on the first ``num_images`` images of ``dataset_name`` and save a grid PNG.

    Args:
        cfg: a config whose ``MODEL.WEIGHTS`` is the checkpoint to draw.
        dataset_name: a dataset registered in ``DatasetCatalog``.
        output: path of the PNG to write.
        num_images: images in the grid.
        columns: images per row.
        score_thresh: only detections scoring at least this are drawn.

    Returns:
        ``output``.
    """
    predictor = DefaultPredictor(cfg)
    metadata = MetadataCatalog.get(dataset_name)
    records = DatasetCatalog.get(dataset_name)[:num_images]
    tiles = []
    for record in records:
        bgr = read_image(record["file_name"], format="BGR")
        instances = predictor(bgr)["instances"].to("cpu")
        instances = instances[instances.scores >= score_thresh]
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
    from .engine import InputError, build_config

    parser = argparse.ArgumentParser(description="Draw a model's predictions on dataset images.")
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", default=None, help="checkpoint (default: OUTPUT_DIR/model_final.pth)")
    parser.add_argument("--output", default=None, help="PNG path (default: predictions.png beside the weights)")
    parser.add_argument("--dataset", default=None, help="dataset name (default: the config's first DATASETS.TEST)")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--score-thresh", type=float, default=0.5)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    try:
        cfg = build_config(args)
        weights = args.weights or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
        if not os.path.isfile(weights):
            raise InputError(f"weights file {weights} not found")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    output = args.output or os.path.join(os.path.dirname(weights), "predictions.png")
    print(draw_predictions(cfg, dataset, output, args.num_images, score_thresh=args.score_thresh))
    return 0


if __name__ == "__main__":
    sys.exit(main())
