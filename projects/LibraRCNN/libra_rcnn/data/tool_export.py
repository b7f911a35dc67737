"""A small COCO export with the quirks that labelling tools write, built from Fashion-MNIST scenes.

CVAT, Label Studio, Roboflow and makesense.ai all export COCO JSON, each a little differently.
This builder writes a train and a val split of real Fashion-MNIST scenes (three categories of
items: tops, footwear, bags) with all of their quirks at once, so that training on one's own export
is tested as users meet it:

- category ids that are neither contiguous nor start at 1, listed out of order, names with spaces;
- images without any annotation;
- ``iscrowd`` boxes (a group of items annotated as one crowd region);
- GT boxes of zero area, and boxes entirely outside their image;
- no ``info`` and no ``licenses`` in the JSON;
- no ``segmentation`` in the annotations (some an empty list, as CVAT writes boxes);
- ``file_name`` in sub-folders;
- grayscale, RGBA and EXIF-rotated images (the annotations in the upright view, as the tools
  show it), of mixed sizes and aspect ratios.

Build::

    python -m libra_rcnn.data.tool_export --out datasets/tool_export

Layout: ``DIR/annotations/{train,val}.json`` and ``DIR/images/<shelf>/<id>.{jpg,png}``; declare it in
a config with ``DATASETS.COCO_INSTANCES`` (configs/OwnData/). The same seed gives the same files.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..io import atomic_open
from .fashion_scenes import FASHION_MNIST_DIR, load_fashion_mnist, render_scene, run_builder

__all__ = ["CATEGORIES", "build_tool_export", "main"]

PROG = "python -m libra_rcnn.data.tool_export"
# The export's categories, in the order the tool lists them: (id, name, Fashion-MNIST labels).
CATEGORIES = [(40, "bag", (8,)), (7, "foot wear", (5, 7, 9)), (12, "top wear", (0, 2, 4, 6))]
# (width, height) of the scenes: landscape, portrait and square.
SIZES = ((320, 240), (240, 320), (256, 256), (288, 192))
# Every image is one of these; the annotations are in the displayed (upright) view.
KINDS = ("rgb_jpeg", "grayscale_png", "rgba_png", "exif_rotated_jpeg")
EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6  # EXIF orientation 6: the viewer turns the stored pixels 90 degrees clockwise


def _scene(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, width: int, height: int):
    """An RGB scene of ``width`` x ``height`` with its items: :func:`render_scene` on a square
    canvas of the longer side, cropped, keeping the items whose box lies inside the crop."""
    side = max(width, height)
    pixels, items = render_scene(rng, images, labels, size=side, min_objects=1, max_objects=7)
    kept = []
    for item in items:
        x, y, w, h = item["bbox"]
        if x + w <= width and y + h <= height:
            kept.append(item)
    return pixels[:height, :width], kept


def _save(pixels: np.ndarray, kind: str, path_no_ext: str) -> Tuple[str, int, int]:
    """Write the upright RGB ``pixels`` as ``kind``; returns (path, width, height) as displayed."""
    height, width = pixels.shape[:2]
    image = Image.fromarray(pixels)
    if kind == "rgb_jpeg":
        path = path_no_ext + ".jpg"
        image.save(path, quality=95)
    elif kind == "grayscale_png":
        path = path_no_ext + ".png"
        image.convert("L").save(path)
    elif kind == "rgba_png":
        path = path_no_ext + ".png"
        rgba = image.convert("RGBA")
        rgba.putalpha(Image.fromarray(np.full((height, width), 230, np.uint8)))
        rgba.save(path)
    else:  # stored turned 90 degrees counter-clockwise; the EXIF tag turns it back for viewers
        path = path_no_ext + ".jpg"
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = ROTATE_90_CW
        image.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    return path, width, height


def _split(rng, images, labels, count: int, out_dir: str, split: str, progress) -> Dict:
    """The COCO dict of one split, its images written under ``out_dir/images``."""
    to_category = {label: cid for cid, _, group in CATEGORIES for label in group}
    mask = np.isin(labels, list(to_category))
    images, labels = images[mask], labels[mask]
    coco_images: List[dict] = []
    annotations: List[dict] = []
    for k in range(count):
        image_id = 1000 + 3 * k  # ids need not be contiguous either
        width, height = SIZES[k % len(SIZES)]
        kind = KINDS[(k // len(SIZES)) % len(KINDS)]
        pixels, items = _scene(rng, images, labels, width, height)
        shelf = f"shelf_{k % 3}"
        os.makedirs(os.path.join(out_dir, "images", split, shelf), exist_ok=True)
        path, width, height = _save(pixels, kind, os.path.join(out_dir, "images", split, shelf, f"{image_id}"))
        coco_images.append({"id": image_id, "file_name": os.path.relpath(path, os.path.join(out_dir, "images")),
                            "width": width, "height": height})  # fmt: skip
        if k % 10 == 9:
            items = []  # an image nobody annotated: background only
        boxes = []
        for item in items:
            x, y, w, h = item["bbox"]
            boxes.append({"category_id": to_category[int(item["label"])], "bbox": [x, y, w, h], "iscrowd": 0})
        if k % 7 == 3 and len(boxes) >= 3:  # the first three items annotated as one crowd region
            group = np.array([b["bbox"] for b in boxes[:3]], dtype=np.float64)
            x0, y0 = group[:, 0].min(), group[:, 1].min()
            x1, y1 = (group[:, 0] + group[:, 2]).max(), (group[:, 1] + group[:, 3]).max()
            boxes = [{"category_id": boxes[0]["category_id"], "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 1}] + boxes[3:]
        if k % 8 == 5:  # a click without a drag: a box of zero width
            boxes.append({"category_id": CATEGORIES[1][0], "bbox": [10.0, 12.0, 0.0, 30.0], "iscrowd": 0})
        if k % 8 == 6:  # a box dragged past the image's border, wholly outside it
            boxes.append({"category_id": CATEGORIES[2][0], "bbox": [width + 5.0, 20.0, 40.0, 30.0], "iscrowd": 0})
        for box in boxes:
            annotation = {"id": len(annotations) + 1, "image_id": image_id, **box,
                          "area": float(box["bbox"][2] * box["bbox"][3])}  # fmt: skip
            if len(annotations) % 2:
                annotation["segmentation"] = []  # CVAT's boxes; the others have none at all
            annotations.append(annotation)
        progress.update()
    categories = [{"id": cid, "name": name, "supercategory": "fashion"} for cid, name, _ in CATEGORIES]
    return {"images": coco_images, "annotations": annotations, "categories": categories}


def build_tool_export(
    out_dir: str, num_train: int = 600, num_val: int = 150, seed: int = 0, fashion_mnist_dir: str = FASHION_MNIST_DIR
) -> Dict[str, str]:
    """Write the export's train and val splits under ``out_dir``.

    Returns:
        split name -> path of its COCO annotation file (no ``info``, no ``licenses``).

    Raises:
        FileNotFoundError: when the Fashion-MNIST files are missing, naming how to get them.
    """
    written = {}
    with tqdm(total=num_train + num_val, desc="tool_export", unit="image", file=sys.stderr) as progress:
        for split, count, split_seed in (("train", num_train, seed * 2), ("val", num_val, seed * 2 + 1)):
            images, labels = load_fashion_mnist(split, fashion_mnist_dir)
            coco = _split(np.random.default_rng(split_seed), images, labels, count, out_dir, split, progress)
            json_file = os.path.join(out_dir, "annotations", f"{split}.json")
            os.makedirs(os.path.dirname(json_file), exist_ok=True)
            with atomic_open(json_file) as f:
                json.dump(coco, f)
            written[split] = json_file
    return written


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="datasets/tool_export", help="output folder (default: datasets/tool_export)")
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-val", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fashion-mnist-dir", default=FASHION_MNIST_DIR, help="folder of Fashion-MNIST's IDX files")
    args = parser.parse_args(argv)
    return run_builder(PROG, lambda: build_tool_export(args.out, args.num_train, args.num_val, args.seed,
                                                       args.fashion_mnist_dir))


if __name__ == "__main__":
    sys.exit(main())
