"""The input, backbone and neck of a converted model's Detectron2 config."""
from typing import Optional, Tuple

from .errors import ConversionError
from .mmdet_layout import WeightLayout
from .mmdet_plan import STAGES, LEVELS, ConfigPlan, MmdetConfig, d2_norm, norm_type

__all__ = ["input_settings", "backbone_settings", "neck_settings"]


def input_settings(plan: ConfigPlan, cfg: MmdetConfig, model: str) -> None:
    pre = cfg.get(model + "data_preprocessor")
    norm = None
    if pre and pre.get("mean") is not None:
        norm, source = dict(mean=pre["mean"], std=pre.get("std", [1.0, 1.0, 1.0]),
                            rgb=bool(pre.get("bgr_to_rgb", False))), model + "data_preprocessor"  # fmt: skip
    elif cfg.get("img_norm_cfg"):
        n = cfg.get("img_norm_cfg")
        norm, source = dict(mean=n["mean"], std=n["std"], rgb=bool(n.get("to_rgb", False))), "img_norm_cfg"
    if norm is not None:
        plan.set("INPUT.FORMAT", "RGB" if norm["rgb"] else "BGR", source + (".bgr_to_rgb" if model else ".to_rgb"))
        plan.set("MODEL.PIXEL_MEAN", [float(v) for v in norm["mean"]], source + ".mean")
        plan.set("MODEL.PIXEL_STD", [float(v) for v in norm["std"]], source + ".std")
    else:
        reason = "mmdetection's default data_preprocessor" + ("" if not cfg else ": none in the config")
        plan.assume("INPUT.FORMAT", "RGB", reason)
        plan.assume("MODEL.PIXEL_MEAN", [123.675, 116.28, 103.53], reason)
        plan.assume("MODEL.PIXEL_STD", [58.395, 57.12, 57.375], reason)
    for split, (min_key, max_key) in (("test", ("INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST")),
                                      ("train", ("INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN"))):  # fmt: skip
        found = _resize_scale(cfg, split)
        if found is None:
            short, long, source = 800, 1333, None
            plan.assume(min_key, short if split == "test" else [short], "mmdetection's default 1333x800")
            plan.assume(max_key, long, "mmdetection's default 1333x800")
            continue
        (short, long), source = found
        plan.set(min_key, short if split == "test" else [short], source)
        plan.set(max_key, long, source)


def _resize_scale(cfg: MmdetConfig, split: str) -> Optional[Tuple[Tuple[int, int], str]]:
    """((short side, long side), source) of the keep-ratio Resize of the ``split`` pipeline."""
    candidates = [f"{split}_pipeline", f"{split}_dataloader.dataset.pipeline", f"data.{split}.pipeline"]
    for key in candidates:
        pipeline = cfg.get(key)
        if not isinstance(pipeline, list):
            continue
        steps = list(pipeline)
        for i, step in enumerate(steps):
            if isinstance(step, dict) and step.get("type") == "MultiScaleFlipAug":  # mmdetection 2.x
                inner = [dict(t, img_scale=step.get("img_scale")) for t in step.get("transforms", [])]
                steps[i : i + 1] = inner
        for i, step in enumerate(steps):
            if not isinstance(step, dict) or step.get("type") != "Resize":
                continue
            where = f"{key}[{i}]"
            scale = step.get("scale", step.get("img_scale"))
            if isinstance(scale, list) and len(scale) == 1:
                scale = scale[0]
            if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and all(isinstance(v, int) for v in scale)):
                if split == "train":
                    return None  # multi-scale training: the plain config's sizes stay
                raise ConversionError(f"{where}.scale = {scale!r}: Detectron2 tests at one (short, long) size")
            if not step.get("keep_ratio", True):
                raise ConversionError(f"{where}.keep_ratio = False: Detectron2 resizes keeping the aspect ratio")
            return (min(scale), max(scale)), f"{where}.scale"
    return None


def backbone_settings(plan: ConfigPlan, cfg: MmdetConfig, layout: WeightLayout, model: str) -> None:
    key = model + "backbone"
    b = cfg.get(key) or {}
    if cfg and b:
        kind = b.get("type")
        if kind not in ("ResNet", "ResNeXt", "mmdet.ResNet", "mmdet.ResNeXt"):
            raise ConversionError(f"{key}.type = {kind!r}: the converter mirrors ResNet and ResNeXt backbones")
        for name in ("dcn", "plugins"):
            if b.get(name):
                raise ConversionError(f"{key}.{name} = {b[name]!r}: Detectron2's ResNet has no equivalent")
        for name in ("deep_stem", "avg_down"):
            if b.get(name):
                raise ConversionError(f"{key}.{name} = True (ResNetV1d): Detectron2's ResNet has a plain stem")
        if b.get("depth") not in (None, layout.backbone.depth):
            raise ConversionError(f"{key}.depth = {b['depth']} but the weights hold a ResNet-{layout.backbone.depth}")
        if tuple(b.get("dilations", (1, 1, 1, 1))) != (1, 1, 1, 1):
            raise ConversionError(f"{key}.dilations = {b['dilations']}: only undilated ResNets are mirrored")
    plan.set("MODEL.RESNETS.DEPTH", layout.backbone.depth, f"weights: backbone.layer1-4 ({layout.backbone.block} blocks)")
    plan.set("MODEL.RESNETS.NUM_GROUPS", layout.backbone.groups, "weights: backbone.layer1.0.conv2 groups")
    plan.set("MODEL.RESNETS.WIDTH_PER_GROUP", layout.backbone.width_per_group, "weights: backbone.layer1.0.conv2")
    plan.set("MODEL.RESNETS.STEM_OUT_CHANNELS", layout.backbone.stem_channels, "weights: backbone.conv1")
    plan.set("MODEL.RESNETS.RES2_OUT_CHANNELS", layout.backbone.stage_channels[0], "weights: backbone.layer1")
    if layout.backbone.block == "bottleneck":
        if b and "style" in b:
            if b["style"] not in ("pytorch", "caffe"):
                raise ConversionError(f"{key}.style = {b['style']!r}: 'pytorch' or 'caffe'")
            plan.set("MODEL.RESNETS.STRIDE_IN_1X1", b["style"] == "caffe", f"{key}.style")
        else:
            plan.assume("MODEL.RESNETS.STRIDE_IN_1X1", False, "mmdetection's default style='pytorch'")
    norm_cfg = b.get("norm_cfg") if b else None
    if norm_cfg is not None and b.get("norm_eval", True) and norm_type(norm_cfg) != "GN":
        norm_cfg = dict(norm_cfg, requires_grad=False)  # norm_eval: statistics and affine frozen in training
    plan.set("MODEL.RESNETS.NORM", d2_norm(f"{key}.norm_cfg", norm_cfg, layout.backbone.norm, backbone=True,
                                            plan=plan), f"{key}.norm_cfg" if norm_cfg else "weights: backbone.bn1/gn1")  # fmt: skip
    if b and "frozen_stages" in b:
        plan.set("MODEL.BACKBONE.FREEZE_AT", max(int(b["frozen_stages"]) + 1, 0), f"{key}.frozen_stages")
    else:
        plan.assume("MODEL.BACKBONE.FREEZE_AT", 2, "mmdetection's default frozen_stages=1")


def neck_settings(plan: ConfigPlan, cfg: MmdetConfig, layout: WeightLayout, model: str) -> None:
    neck = cfg.get(model + "neck")
    fpn_key = model + ("neck.0" if isinstance(neck, list) else "neck")
    fpn = cfg.get(fpn_key) or {}
    if cfg and fpn and fpn.get("type") not in ("FPN", "mmdet.FPN"):
        raise ConversionError(f"{fpn_key}.type = {fpn.get('type')!r}: the converter mirrors FPN (+ BFP) necks")
    first, count = layout.fpn.first_stage, layout.fpn.num_lateral
    in_features = list(STAGES[first - 2 : first - 2 + count])
    if first - 2 + count != 4:
        raise ConversionError(f"{fpn_key}: the FPN's laterals end before C5 (end_level): Detectron2's FPN reads up to res5")
    plan.set("MODEL.RESNETS.OUT_FEATURES", in_features, f"weights: {layout.fpn.prefix}lateral_convs in channels")
    plan.set("MODEL.FPN.IN_FEATURES", in_features, f"weights: {layout.fpn.prefix}lateral_convs in channels")
    plan.set("MODEL.FPN.OUT_CHANNELS", layout.fpn.channels, f"weights: {layout.fpn.prefix}lateral_convs out channels")
    plan.set("MODEL.FPN.NORM", d2_norm(f"{fpn_key}.norm_cfg", fpn.get("norm_cfg") if fpn else None,
                                        layout.fpn.norm, backbone=False, plan=plan),
             f"{fpn_key}.norm_cfg" if fpn.get("norm_cfg") else f"weights: {layout.fpn.prefix}lateral_convs.0")  # fmt: skip
    if fpn.get("upsample_cfg", {}).get("mode", "nearest") != "nearest":
        raise ConversionError(f"{fpn_key}.upsample_cfg = {fpn['upsample_cfg']}: Detectron2's FPN upsamples 'nearest'")
    num_levels = count + layout.fpn.num_extra
    strides = [2 ** (first + i) for i in range(num_levels)]
    if cfg and fpn.get("num_outs") not in (None, num_levels):
        raise ConversionError(f"{fpn_key}.num_outs = {fpn['num_outs']} but the weights hold {num_levels} levels")
    plan.levels = [LEVELS[s] for s in strides]
    if layout.kind == "retinanet":
        if num_levels != 5 or layout.fpn.extra != "conv":
            raise ConversionError(
                f"{fpn_key}: a RetinaNet FPN with {num_levels} levels and {layout.fpn.extra} extra levels; "
                "Detectron2's has P3-P7 with two extra convolutions"
            )
        mode = fpn.get("add_extra_convs", None) if fpn else None
        if mode is None or mode is True:
            mode = "on_input" if layout.fpn.extra_in_channels == layout.backbone.stage_channels[3] else "on_output"
            if fpn.get("extra_convs_on_inputs") is False:  # mmdetection 2.x spelling
                mode = "on_output"
            if not fpn:
                plan.assumptions.append(
                    f"{fpn_key}.add_extra_convs = {mode!r} (from the channels of fpn_convs.{count})")
        if mode != "on_input":
            raise ConversionError(
                f"{fpn_key}.add_extra_convs = {mode!r}: Detectron2's P6 is computed from C5 ('on_input') only"
            )
        relu = bool(fpn.get("relu_before_extra_convs", False)) if fpn else False
        if not fpn:
            plan.assumptions.append(f"{fpn_key}.relu_before_extra_convs = False (mmdetection's RetinaNet)")
        if relu and plan.value("MODEL.FPN.NORM"):
            raise ConversionError(
                f"{fpn_key}.relu_before_extra_convs = True with a norm: Detectron2's P6/P7 with a ReLU have no norm"
            )
        builder = "build_retinanet_resnet_fpn_backbone" if relu else "build_retinanet_resnet_fpn_p7_no_relu_backbone"
        fpn_source = f"{fpn_key}.relu_before_extra_convs"
    else:
        if num_levels != 5 or layout.fpn.extra != "pool" or first != 2:
            raise ConversionError(
                f"{fpn_key}: {num_levels} levels from C{first} with {layout.fpn.extra} extra levels; Detectron2's "
                "Faster R-CNN FPN has P2-P5 and P6 by max pooling"
            )
        builder, fpn_source = "build_resnet_fpn_backbone", f"{fpn_key}.type"
    if not layout.bfp:
        plan.set("MODEL.BACKBONE.NAME", builder, fpn_source)
        return
    bfp_key = model + "neck.1"
    bfp = cfg.get(bfp_key) or {}
    if bfp and bfp.get("norm_cfg"):
        raise ConversionError(f"{bfp_key}.norm_cfg = {bfp['norm_cfg']}: our BFP refinement has no norm")
    if bfp and bfp.get("num_levels") not in (None, num_levels):
        raise ConversionError(f"{bfp_key}.num_levels = {bfp['num_levels']}: the BFP balances all {num_levels} FPN levels")
    plan.set("MODEL.BACKBONE.NAME", "build_bfp_backbone", "weights: neck.1.refine")
    plan.set("MODEL.LIBRA.BFP.FPN_BACKBONE", builder, fpn_source)
    plan.set("MODEL.LIBRA.BFP.REFINE_TYPE", layout.refine, "weights: neck.1.refine")
    if bfp and "refine_level" in bfp:
        plan.set("MODEL.LIBRA.BFP.REFINE_LEVEL", int(bfp["refine_level"]), f"{bfp_key}.refine_level")
    else:
        plan.assume("MODEL.LIBRA.BFP.REFINE_LEVEL", plan.levels.index("p4"), "P4, as mmdetection's Libra configs")
