"""Converting mmdetection checkpoints to Detectron2: weights and a config that computes what the
mmdetection model computes (``python -m libra_rcnn.convert_mmdet``, :mod:`.mmdet_convert`)."""
from .errors import ConversionError
from .mmdet_checkpoint import config_text, load_mmdet_checkpoint
from .mmdet_config_text import read_config_text
from .mmdet_convert import convert, detectron2_cfg, main
from .mmdet_keys import anchor_order, convert_state_dict
from .mmdet_layout import WeightLayout, weight_layout
from .mmdet_plan import ConfigPlan
from .mmdet_settings import detectron2_settings
from .yaml_writer import write_config

__all__ = [
    "ConversionError",
    "ConfigPlan",
    "WeightLayout",
    "load_mmdet_checkpoint",
    "config_text",
    "read_config_text",
    "weight_layout",
    "convert_state_dict",
    "anchor_order",
    "detectron2_settings",
    "detectron2_cfg",
    "write_config",
    "convert",
    "main",
]
