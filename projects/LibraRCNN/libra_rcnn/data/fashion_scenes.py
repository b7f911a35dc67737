"""Fashion-MNIST scenes: a small, real, deterministic detection dataset in COCO format.

Each scene is a 256x256 RGB image on a dark textured, noisy background with 2–12
Fashion-MNIST items (real 28x28 product photos, Zalando) pasted with canvas sides from 18 px
to 175 px, overlapping (each keeps at least 70 % of its pixels visible), above 1–3
unannotated fragments of other items as clutter (hard negatives). Boxes are tight around the visible pixels of each item. Train scenes use only
Fashion-MNIST's train split, validation scenes only its test split. The same seed and
arguments give the same files, byte for byte.

Build::

    python -m libra_rcnn.data --out datasets/fashion_scenes

Layout (what ``register_coco_instances`` reads; the JSON has COCO's ``info`` and ``licenses``
too, which pycocotools' ``loadRes`` needs in some releases)::

    fashion_scenes/annotations/instances_{train,val}.json
    fashion_scenes/{train,val}/000000.png ...

Importing :mod:`libra_rcnn` registers ``fashion_scenes_train`` and ``fashion_scenes_val``
under ``$DETECTRON2_DATASETS/fashion_scenes`` (default ``./datasets``).
"""
import argparse
import gzip
import json
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from PIL import Image
from tqdm import tqdm

from ..config import EXIT_BAD_INPUT
from ..io import atomic_open

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "load_fashion_mnist",
    "render_scene",
    "build_fashion_scenes",
    "register_fashion_scenes",
]

PROG = "python -m libra_rcnn.data"

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
# COCO's "licenses" entry of every scene: Fashion-MNIST's images are under the MIT License.
FASHION_MNIST_LICENSE = {
    "id": 1,
    "name": "MIT License (Fashion-MNIST, Zalando Research)",
    "url": "https://github.com/zalandoresearch/fashion-mnist/blob/master/LICENSE",
}
# Where Debian's package dataset-fashion-mnist installs the files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_SPLIT_FILES = {"train": "train", "val": "t10k"}
# A scene draws its size class first: (probability, min side, max side) of the item's 28x28
# canvas in pixels, for a 256-pixel scene (scaled with the scene). Tight boxes are smaller.
_SIZE_CLASSES = ((0.35, 18, 40), (0.45, 40, 100), (0.20, 100, 175))
_ALPHA_GAIN = 4.0


def load_fashion_mnist(split: str, root: str = FASHION_MNIST_DIR) -> Tuple[np.ndarray, np.ndarray]:
    """Read one Fashion-MNIST split from its IDX files.

    Args:
        split: ``"train"`` (60 000 images) or ``"val"`` (Fashion-MNIST's test split, 10 000).
        root: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.

    Returns:
        images uint8 (N, 28, 28) and labels int64 (N,) in [0, 10).

    Raises:
        FileNotFoundError: naming the missing file and how to install it.
    """
    prefix = os.path.join(root, _SPLIT_FILES[split])
    paths = (prefix + "-images-idx3-ubyte.gz", prefix + "-labels-idx1-ubyte.gz")
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Fashion-MNIST file {path} not found: install Debian's package "
                "dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist) or pass --fashion-mnist-dir"
            )
    with gzip.open(paths[0], "rb") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(paths[1], "rb") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
    return images, labels


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 (size, size, 3) in [0, 1]: dark coloured blotches, faint stripes and noise."""
    coarse = rng.uniform(0.0, 0.35, size=(rng.integers(3, 9), rng.integers(3, 9), 3))
    blotches = np.asarray(
        Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR),
        dtype=np.float32,
    ) / 255.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 40)
    stripes = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period))
    image = blotches + rng.uniform(0.0, 0.08) * stripes[..., None]
    image += rng.normal(0.0, rng.uniform(0.02, 0.05), size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def _item_layer(item: np.ndarray, side: int) -> np.ndarray:
    """float32 (side, side) in [0, 1]: a 28x28 uint8 item resized bilinearly."""
    resized = Image.fromarray(item).resize((side, side), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32) / 255.0


def _paste(canvas: np.ndarray, value: np.ndarray, colour: np.ndarray, y: int, x: int) -> None:
    """Alpha-blend an (h, w) intensity layer, tinted by ``colour``, onto ``canvas`` at (y, x).

    The alpha is ``min(1, _ALPHA_GAIN * value)``: the dark background of a Fashion-MNIST
    photo is transparent, the item itself opaque. Parts outside the canvas are cut off.
    """
    size = canvas.shape[0]
    h, w = value.shape
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, size), min(x + w, size)
    if y1 <= y0 or x1 <= x0:
        return
    value = value[y0 - y : y1 - y, x0 - x : x1 - x]
    alpha = np.clip(value * _ALPHA_GAIN, 0.0, 1.0)[..., None]
    shade = (0.35 + 0.65 * value)[..., None] * colour
    canvas[y0:y1, x0:x1] = alpha * shade + (1.0 - alpha) * canvas[y0:y1, x0:x1]


def _place(rng, owner, layer, full_area, min_visible, attempts=20):
    """Find a position for an item layer that leaves every earlier item visible enough.

    Args:
        owner: int64 (S, S), index of the item on top at each pixel, -1 where none.
        layer: float32 (s, s), the item's intensity.
        full_area: pixels of each earlier item.
        min_visible: smallest share of each earlier item's pixels that must stay visible.

    Returns:
        (y, x, new owner map, pixels of the item) or None when no position was found.
    """
    size = owner.shape[0]
    side = layer.shape[0]
    new_id = len(full_area)
    covered = layer * _ALPHA_GAIN > 0.5  # the pixels _paste makes mostly opaque
    for _ in range(attempts):
        y = int(rng.integers(-side // 8, size - side + side // 8 + 1))
        x = int(rng.integers(-side // 8, size - side + side // 8 + 1))
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + side, size), min(x + side, size)
        mask = covered[y0 - y : y1 - y, x0 - x : x1 - x]
        area = int(mask.sum())
        if area < 16:
            continue
        trial = owner.copy()
        trial[y0:y1, x0:x1][mask] = new_id
        visible = np.bincount(trial[trial >= 0], minlength=new_id + 1)
        if all(visible[k] >= min_visible * full_area[k] for k in range(new_id)):
            return y, x, trial, area
    return None


def render_scene(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray,
    size: int = 256,
    min_objects: int = 2,
    max_objects: int = 12,
    max_clutter: int = 3,
    min_visible: float = 0.7,
) -> Tuple[np.ndarray, List[Dict]]:
    """Render one scene.

    Items are placed one after another; a placement that would leave an earlier item with
    less than ``min_visible`` of its pixels visible is retried elsewhere (at most 20 times,
    then the item is dropped). Clutter (1/4 to 1/2 of another item, unannotated) lies
    beneath the items.

    Args:
        rng: the generator every random draw comes from.
        images, labels: the Fashion-MNIST split the items come from.
        size: side of the square scene in pixels.
        min_objects, max_objects: range of the number of annotated items.
        max_clutter: at most this many fragments of clutter.
        min_visible: smallest visible share of an item.

    Returns:
        uint8 (size, size, 3) RGB image, and per item a dict with ``bbox`` (XYWH_ABS pixels,
        tight around its visible pixels) and ``label`` in [0, 10).
    """
    canvas = _background(rng, size)
    for _ in range(rng.integers(1, max_clutter + 1)):
        item = images[rng.integers(len(images))]
        side = max(int(rng.integers(20, 90) * size // 256), 4)
        layer = _item_layer(item, side)
        keep_h, keep_w = int(side * rng.uniform(0.4, 0.7)), int(side * rng.uniform(0.4, 0.7))
        top, left = int(rng.integers(0, side - keep_h + 1)), int(rng.integers(0, side - keep_w + 1))
        fragment = layer[top : top + keep_h, left : left + keep_w]
        colour = rng.uniform(0.3, 1.0, size=3).astype(np.float32)
        _paste(canvas, fragment, colour, int(rng.integers(-10, size - 10)), int(rng.integers(-10, size - 10)))

    owner = np.full((size, size), -1, dtype=np.int64)
    full_area: List[int] = []  # pixels of each placed item, before later items occlude it
    item_labels: List[int] = []
    probs = [p for p, _, _ in _SIZE_CLASSES]
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        index = int(rng.integers(len(images)))
        _, low, high = _SIZE_CLASSES[rng.choice(len(_SIZE_CLASSES), p=probs)]
        side = int(round(np.exp(rng.uniform(np.log(low), np.log(high))) * size / 256))
        layer = _item_layer(images[index], max(side, 4))
        colour = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
        placed = _place(rng, owner, layer, full_area, min_visible)
        if placed is None:
            continue
        y, x, trial, area = placed
        owner = trial
        full_area.append(area)
        item_labels.append(int(labels[index]))
        _paste(canvas, layer, colour, y, x)

    canvas += rng.normal(0.0, 0.02, size=canvas.shape).astype(np.float32)
    image = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    annotations = []
    for obj, label in enumerate(item_labels):
        ys, xs = np.nonzero(owner == obj)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        annotations.append({"bbox": [x0, y0, x1 - x0, y1 - y0], "label": label})
    return image, annotations


def _split_root(root: str, split: str) -> Tuple[str, str]:
    """(annotation file, image folder) of a split under ``root``."""
    return os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split)


def build_fashion_scenes(
    out_dir: str,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
    size: int = 256,
    fashion_mnist_dir: str = FASHION_MNIST_DIR,
) -> Dict[str, str]:
    """Write the train and val splits of Fashion-MNIST scenes under ``out_dir``.

    Args:
        out_dir: output folder (created).
        num_train, num_val: scenes per split.
        seed: the same seed and arguments give the same files, byte for byte.
        size: side of each scene in pixels.
        fashion_mnist_dir: folder of the Fashion-MNIST IDX files.

    Returns:
        split name -> path of its COCO annotation file.
    """
    written = {}
    for split, count, split_seed in (("train", num_train, seed * 2), ("val", num_val, seed * 2 + 1)):
        images, labels = load_fashion_mnist(split, fashion_mnist_dir)
        rng = np.random.default_rng(split_seed)
        json_file, image_dir = _split_root(out_dir, split)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(os.path.dirname(json_file), exist_ok=True)
        coco_images, coco_annotations = [], []
        for image_id in tqdm(range(count), desc=f"fashion_scenes {split}", unit="image", file=sys.stderr):
            pixels, items = render_scene(rng, images, labels, size=size)
            file_name = f"{image_id:06d}.png"
            Image.fromarray(pixels).save(os.path.join(image_dir, file_name))
            coco_images.append(
                {"id": image_id, "file_name": file_name, "width": size, "height": size, "license": 1}
            )
            for item in items:
                x, y, w, h = item["bbox"]
                coco_annotations.append(
                    {
                        "id": len(coco_annotations) + 1,
                        "image_id": image_id,
                        "category_id": item["label"] + 1,
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(FASHION_MNIST_CLASSES)]
        info = {
            "description": f"Fashion-MNIST scenes, {split} split: {count} scenes of {size}x{size} px, seed {seed}",
            "contributor": "libra-rcnn (python -m libra_rcnn.data)",
            "version": "1.0",
            "url": "",
        }
        coco = {
            "info": info,
            "licenses": [FASHION_MNIST_LICENSE],
            "images": coco_images,
            "annotations": coco_annotations,
            "categories": categories,
        }
        with atomic_open(json_file) as f:
            json.dump(coco, f, sort_keys=True)
        written[split] = json_file
    return written


def default_root() -> str:
    """``$DETECTRON2_DATASETS/fashion_scenes``, with ``./datasets`` as the default folder."""
    return os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "fashion_scenes")


def register_fashion_scenes(root: Optional[str] = None, prefix: str = "fashion_scenes") -> List[str]:
    """Register ``{prefix}_train`` and ``{prefix}_val`` in Detectron2's catalogs.

    The files need not exist yet: they are read when the dataset is first loaded. A name
    that is already registered is left as it is.

    Args:
        root: folder that :func:`build_fashion_scenes` wrote; :func:`default_root` if None.
        prefix: dataset name prefix.

    Returns:
        the dataset names.
    """
    root = root or default_root()
    names = []
    for split in ("train", "val"):
        name = f"{prefix}_{split}"
        names.append(name)
        if name in DatasetCatalog.list():
            continue
        json_file, image_dir = _split_root(root, split)
        register_coco_instances(name, {"thing_classes": list(FASHION_MNIST_CLASSES)}, json_file, image_dir)
    return names


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Build the Fashion-MNIST scenes detection dataset.")
    parser.add_argument("--out", default=None, help="output folder (default: $DETECTRON2_DATASETS/fashion_scenes)")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256, help="side of a scene in pixels")
    parser.add_argument("--fashion-mnist-dir", default=FASHION_MNIST_DIR)
    args = parser.parse_args(argv)
    out = args.out or default_root()
    return run_builder(PROG, lambda: build_fashion_scenes(
        out, args.num_train, args.num_val, args.seed, args.size, args.fashion_mnist_dir))


def run_builder(prog: str, build: Callable[[], Dict[str, str]]) -> int:
    """Run a dataset builder as a command: print each split's annotation file and the time taken;
    a missing input (Fashion-MNIST's files) is one line and exit status 2."""
    start = time.perf_counter()
    try:
        written = build()
    except FileNotFoundError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for split, path in written.items():
        print(f"{split}: {path}")
    print(f"built in {time.perf_counter() - start:.1f} s")
    return 0
