"""Checks of a COCO annotation file as labelling tools write it, before anything trains on it.

Detectron2's ``load_coco_json`` reads what it needs and fails deep inside a run on what it
cannot use (a ``KeyError`` on a missing ``width``, an ``AssertionError`` on a stray
``image_id``). :func:`check_coco_json` reads the file first and stops on the first record that
cannot be used, in one line naming the file, the record and the key. What every tool writes
differently and Detectron2 handles is accepted: category ids that are not contiguous or do not
start at 1 (mapped to 0..K-1 in id order, the names kept), images without annotations, ``iscrowd``
regions, no ``segmentation``, no ``info`` or ``licenses``, ``file_name`` in sub-folders. Boxes of
zero area or outside their image are dropped at training with a count
(:func:`libra_rcnn.data.checks.check_records`).
"""
import json
import math
import numbers
from typing import List, Tuple

from .checks import DatasetError

__all__ = ["check_coco_json", "coco_categories"]


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def coco_categories(data: dict, json_file: str) -> Tuple[List[int], List[str]]:
    """The categories of a COCO dict in Detectron2's class order (by id): (ids, names), checked.

    Raises:
        DatasetError: for no ``categories``, or one without an integer ``id`` or a ``name``, or
            an id given twice, naming the file and the record.
    """
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        raise DatasetError(f"{json_file}: no 'categories' list (the classes to detect)")
    seen = {}
    for i, category in enumerate(categories):
        if not isinstance(category, dict) or not isinstance(category.get("id"), int) or isinstance(category.get("id"), bool):
            raise DatasetError(f"{json_file}: categories[{i}] has no integer 'id'")
        if not isinstance(category.get("name"), str) or not category["name"]:
            raise DatasetError(f"{json_file}: categories[{i}] (id {category['id']}) has no 'name'")
        if category["id"] in seen:
            raise DatasetError(f"{json_file}: categories[{i}] repeats id {category['id']} of categories[{seen[category['id']]}]")
        seen[category["id"]] = i
    ordered = sorted(categories, key=lambda c: c["id"])
    return [c["id"] for c in ordered], [c["name"] for c in ordered]


def check_coco_json(json_file: str) -> Tuple[List[int], List[str]]:
    """Read a COCO annotation file and check every record Detectron2 will read.

    - the file is JSON with ``images``, ``annotations`` (may be empty) and ``categories`` lists;
    - each image has an integer ``id`` (once), a ``file_name`` and a positive ``width`` and
      ``height``;
    - each annotation has an ``image_id`` of an image, a ``category_id`` of a category and a
      ``bbox`` of 4 finite numbers with non-negative width and height.

    Returns:
        :func:`coco_categories`: the category ids and names in class order.

    Raises:
        DatasetError: on the first record that cannot be used, naming the file, the record (its
            index and id) and the key.
    """
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{json_file}: not JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{json_file}: not a COCO dict (images, annotations, categories)")
    ids, names = coco_categories(data, json_file)
    images = data.get("images")
    if not isinstance(images, list):
        raise DatasetError(f"{json_file}: no 'images' list")
    image_ids = set()
    for i, image in enumerate(images):
        where = f"{json_file}: images[{i}]"
        if not isinstance(image, dict) or not isinstance(image.get("id"), int) or isinstance(image.get("id"), bool):
            raise DatasetError(f"{where} has no integer 'id'")
        where += f" (id {image['id']})"
        if image["id"] in image_ids:
            raise DatasetError(f"{where} repeats an image id")
        image_ids.add(image["id"])
        if not isinstance(image.get("file_name"), str) or not image["file_name"]:
            raise DatasetError(f"{where} has no 'file_name'")
        for key in ("width", "height"):
            if not _number(image.get(key)) or image[key] <= 0:
                raise DatasetError(f"{where} has {key!r} = {image.get(key)!r}, not a positive number")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise DatasetError(f"{json_file}: 'annotations' is not a list")
    known = set(ids)
    for i, ann in enumerate(annotations):
        where = f"{json_file}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise DatasetError(f"{where} is not a dict")
        where += f" (id {ann.get('id', '?')})"
        if ann.get("image_id") not in image_ids:
            raise DatasetError(f"{where} has 'image_id' {ann.get('image_id')!r}, which no image has")
        if ann.get("category_id") not in known:
            raise DatasetError(f"{where} has 'category_id' {ann.get('category_id')!r}, not one of the categories {ids}")
        box = ann.get("bbox")
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_number(v) for v in box)):
            raise DatasetError(f"{where} has 'bbox' {box!r}, not [x, y, width, height] of 4 numbers")
        if box[2] < 0 or box[3] < 0:
            raise DatasetError(f"{where} has 'bbox' {box!r} with a negative width or height")
    return ids, names
