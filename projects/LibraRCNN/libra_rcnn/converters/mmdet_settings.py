"""The Detectron2 keys of a converted mmdetection checkpoint: :func:`detectron2_settings`.

Together with what the weights show (:func:`libra_rcnn.converters.mmdet_layout.weight_layout`),
the checkpoint's config (:func:`libra_rcnn.converters.mmdet_config_text.read_config_text`)
gives every Detectron2 key, each with the mmdetection key it came from; without a config,
mmdetection's defaults are used and each is listed as an assumption. Whatever Detectron2 cannot
build the same way (deformable convolutions, a shared-BN RetinaNet head, soft-NMS, ...) raises
:class:`ConversionError` naming the mmdetection key.
"""
from typing import Any, Dict, Optional

from .mmdet_body import backbone_settings, input_settings, neck_settings
from .mmdet_heads import class_settings, retina_head_settings, roi_head_settings, rpn_settings
from .mmdet_layout import WeightLayout
from .mmdet_plan import ConfigPlan, MmdetConfig

__all__ = ["detectron2_settings"]


def detectron2_settings(layout: WeightLayout, variables: Optional[Dict[str, Any]], meta: dict) -> ConfigPlan:
    """The Detectron2 keys that build the model of ``layout`` as the mmdetection config built it.

    Args:
        layout: what the weights hold (:func:`libra_rcnn.convert_mmdet.weight_layout`).
        variables: the checkpoint's config (:func:`read_config_text`), or None: mmdetection's
            defaults are then assumed and listed.
        meta: the checkpoint's ``meta`` (class names in ``dataset_meta`` or ``CLASSES``).

    Raises:
        ConversionError: for a setting Detectron2 cannot mirror, naming the mmdetection key, or
            for a config that contradicts the weights.
    """
    cfg = MmdetConfig(variables)
    plan = ConfigPlan()
    model = "model." if cfg.get("model") is not None else ""
    input_settings(plan, cfg, model)
    backbone_settings(plan, cfg, layout, model)
    neck_settings(plan, cfg, layout, model)
    if layout.kind == "faster-rcnn":
        rpn_settings(plan, cfg, layout, model)
        roi_head_settings(plan, cfg, layout, model)
    else:
        retina_head_settings(plan, cfg, layout, model)
    class_settings(plan, cfg, layout, meta)
    plan.set("MODEL.MASK_ON", False, "the converter converts box detectors")
    return plan
