"""What the tools that run a trained model share: its config, its class names and category ids."""
import json
import logging
import os
from typing import Dict

from detectron2.config import CfgNode
from detectron2.data import Metadata, MetadataCatalog

from ..config import InputError, build_config, check_weights_file
from ..data.checks import DatasetError
from ..data.coco_json import coco_categories

__all__ = ["prediction_config", "class_metadata", "dataset_category_ids"]

logger = logging.getLogger("libra_rcnn")


def prediction_config(args, confidence_threshold: float) -> CfgNode:
    """The config of a trained model for prediction, as Detectron2's ``demo.py`` sets it up.

    ``args.config_file`` and ``args.opts`` (``KEY VALUE`` overrides: ``MODEL.WEIGHTS FILE``);
    without ``MODEL.WEIGHTS``, ``OUTPUT_DIR/model_final.pth``. Every head's score threshold at
    ``confidence_threshold``.

    Raises:
        InputError: for a LazyConfig, a threshold outside [0, 1], or a missing checkpoint.
    """
    if not 0.0 <= confidence_threshold <= 1.0:
        raise InputError(f"--confidence-threshold {confidence_threshold} must lie in [0, 1]")
    if args.config_file and args.config_file.endswith(".py"):
        raise InputError(
            f"--config-file {args.config_file}: a LazyConfig; DefaultPredictor takes a YAML config "
            "(configs/*/*.yaml builds the same models)"
        )
    cfg = build_config(args)
    cfg.defrost()
    if not cfg.MODEL.WEIGHTS:
        cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    check_weights_file(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = confidence_threshold
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = confidence_threshold
    cfg.freeze()
    return cfg


def _json_categories(metadata: Metadata):
    """(ids, names) of a COCO-format dataset's categories in class order, read from its JSON when
    the dataset has not been loaded (which sets them); None without a JSON."""
    json_file = metadata.get("json_file")
    if not json_file:
        return None
    try:
        with open(json_file, encoding="utf-8") as f:
            return coco_categories(json.load(f), json_file)
    except (OSError, ValueError, DatasetError) as e:
        logger.warning("%s: cannot read its categories (%s); classes are named by index", json_file, e)
        return None


def class_metadata(cfg: CfgNode) -> Metadata:
    """The metadata that names the model's classes: ``DATASETS.TEST[0]``'s (its ``thing_classes``,
    else its JSON's categories in Detectron2's order), else a local ``Metadata`` with
    ``MODEL.LIBRA.CLASS_NAMES`` (a converted model's own)."""
    if len(cfg.DATASETS.TEST):
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        if not metadata.get("thing_classes"):
            categories = _json_categories(metadata)
            if categories:
                metadata.set(thing_classes=categories[1])
        if metadata.get("thing_classes"):
            return metadata
    return Metadata(name="model", thing_classes=list(cfg.MODEL.LIBRA.CLASS_NAMES))


def dataset_category_ids(metadata: Metadata) -> Dict[int, int]:
    """Class index -> the dataset's COCO category id, where the dataset maps them (else empty).

    The mapping is Detectron2's (``thing_dataset_id_to_contiguous_id``, set when a COCO-format
    dataset is loaded); a dataset not loaded yet has it from its JSON's ``categories``, in the
    order ``load_coco_json`` gives them.
    """
    mapping = metadata.get("thing_dataset_id_to_contiguous_id")
    if mapping:
        return {contiguous: dataset_id for dataset_id, contiguous in mapping.items()}
    categories = _json_categories(metadata)
    return dict(enumerate(categories[0])) if categories else {}
