"""Checks of dataset records before training: bad data fails early and clearly, or is dropped
with a logged count, never deep inside the sampler or a loss.

Records are Detectron2's standard dataset dicts (``file_name``, ``height``, ``width``,
``annotations`` with ``bbox``, ``bbox_mode``, ``category_id``).
"""
import logging
import math
import os
from collections import Counter
from typing import Dict, List, Sequence

from detectron2.data import get_detection_dataset_dicts
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.structures import BoxMode

__all__ = ["DatasetError", "check_records", "load_train_records", "check_image_files"]

logger = logging.getLogger("libra_rcnn")


class DatasetError(ValueError):
    """A dataset that cannot be trained on, with the dataset, file or record named."""


def _record_name(record: dict, index: int) -> str:
    return f"record {index} (image_id {record.get('image_id', '?')}, {record.get('file_name', '?')})"


def _box_problem(ann: dict, width, height) -> str:
    """Why a GT box cannot be trained on ('' if it can): not finite, zero area, or outside."""
    box = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
    if not all(math.isfinite(v) for v in box):
        return "not finite"
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return "zero area"
    if width and height and (x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height):
        return "outside its image"
    return ""


def check_image_files(records: Sequence[dict], dataset: str) -> None:
    """Raise :class:`DatasetError` naming the first record whose image file does not exist."""
    for i, record in enumerate(records):
        if not os.path.isfile(record["file_name"]):
            raise DatasetError(
                f"dataset {dataset}: image file {record['file_name']} of record {i} "
                f"(image_id {record.get('image_id', '?')}) not found"
            )


def check_records(records: List[dict], dataset: str, num_classes: int, num_classes_key: str) -> List[dict]:
    """Check training records in place and drop the GT boxes no loss can use.

    - an image file that does not exist, or a ``category_id`` outside [0, ``num_classes``):
      :class:`DatasetError` naming the dataset, the record and the value;
    - a GT box that is not finite, has zero area (in XYXY_ABS pixels), or lies entirely
      outside its image: dropped from its record, counted per reason and logged. Boxes partly
      outside stay: Detectron2 clips them to the image.

    Args:
        records: Detectron2 dataset dicts; their ``annotations`` lists are replaced.
        dataset: names the data in messages (e.g. ``"DATASETS.TRAIN ('coco_2017_train',)"``).
        num_classes: the model's number of classes.
        num_classes_key: the config key that sets it, named in the error.

    Returns:
        the same list (records with no boxes left stay; Detectron2's empty-image filter follows).

    Raises:
        DatasetError: as above.
    """
    check_image_files(records, dataset)
    dropped: Dict[str, int] = Counter()
    for i, record in enumerate(records):
        kept = []
        for ann in record.get("annotations", ()):
            category = ann.get("category_id")
            if not isinstance(category, int) or not 0 <= category < num_classes:
                raise DatasetError(
                    f"dataset {dataset}: {_record_name(record, i)} has category_id {category!r}, "
                    f"outside [0, {num_classes}) ({num_classes_key} = {num_classes})"
                )
            problem = _box_problem(ann, record.get("width"), record.get("height"))
            if problem:
                dropped[problem] += 1
            else:
                kept.append(ann)
        if "annotations" in record:
            record["annotations"] = kept
    if dropped:
        detail = ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items()))
        logger.warning("dataset %s: dropped %d GT boxes (%s)", dataset, sum(dropped.values()), detail)
    return records


def load_train_records(cfg, num_classes: int, num_classes_key: str) -> List[dict]:
    """``DATASETS.TRAIN``'s records through Detectron2's loader, checked by :func:`check_records`.

    Detectron2's own steps stay: proposal files, the keypoint filter, and (with
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``) the filter of images without usable annotations,
    now applied after the bad boxes are dropped.

    Raises:
        DatasetError: for an empty dataset, an unknown category id in a COCO json, no image
            left after filtering, or a bad record (see :func:`check_records`).
    """
    names = tuple(cfg.DATASETS.TRAIN)
    where = f"DATASETS.TRAIN {names}"
    try:
        records = get_detection_dataset_dicts(
            names,
            filter_empty=False,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
    except KeyError as e:  # load_coco_json: a category_id missing from the json's categories
        raise DatasetError(f"{where}: {e.args[0] if e.args else e}") from e
    except AssertionError as e:  # Detectron2's "Dataset 'name' is empty!"
        raise DatasetError(f"{where}: {e}") from e
    records = check_records(records, where, num_classes, num_classes_key)
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS and records and "annotations" in records[0]:
        records = filter_images_with_only_crowd_annotations(records)
    if not records:
        raise DatasetError(f"{where}: no image with a usable GT box is left")
    return records
