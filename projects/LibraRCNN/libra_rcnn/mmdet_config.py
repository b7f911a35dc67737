"""The Detectron2 config of a converted mmdetection checkpoint (used by :mod:`.convert_mmdet`).

mmengine keeps the whole training config in a checkpoint (``meta["cfg"]``, mmdetection 3.x;
``meta["config"]`` in 2.x), as Python text of ``key = dict(...)`` assignments.
:func:`read_config_text` reads that text without mmengine and without running it (a literal
evaluation of the syntax tree). :func:`detectron2_settings` turns it, together with what the
weights show (:func:`libra_rcnn.convert_mmdet.weight_layout`), into Detectron2 config keys,
each with the mmdetection key it came from; without a config it uses mmdetection's defaults and
lists each one as an assumption. :func:`write_config` writes them as a YAML config that
``train_net.py`` reads.

Whatever Detectron2 cannot build the same way (deformable convolutions, a shared-BN RetinaNet
head, soft-NMS, ...) raises :class:`ConversionError` naming the mmdetection key.
"""
import ast
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["ConversionError", "ConfigPlan", "read_config_text", "detectron2_settings", "write_config"]


class ConversionError(ValueError):
    """An input this converter cannot convert, with the reason (file, mmdetection key, version)."""


# --- reading the config text ---------------------------------------------------------------


def read_config_text(text: str) -> Dict[str, Any]:
    """The variables of an mmengine / mmcv config dumped as text (``Config.pretty_text``).

    Only literals are evaluated: numbers, strings, ``None``/``True``/``False``, lists, tuples,
    sets, dicts, ``dict(key=value, ...)`` calls, unary minus, and names of variables assigned
    earlier in the text. Nothing in the text is executed.

    Raises:
        ConversionError: naming the line of anything else (an import, a function call, ...).
    """
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise ConversionError(f"the checkpoint's config text is not Python (line {e.lineno}: {e.msg})") from e
    variables: Dict[str, Any] = {}
    for statement in tree.body:
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):  # fmt: skip
            raise ConversionError(
                f"the checkpoint's config text, line {statement.lineno}: only 'name = value' statements are read"
            )
        variables[statement.targets[0].id] = _literal(statement.value, variables)
    return variables


def _literal(node: ast.AST, variables: Dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_literal(e, variables) for e in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: list}[type(node)](items)
    if isinstance(node, ast.Dict):
        return {_literal(k, variables): _literal(v, variables) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value, variables) for kw in node.keywords if kw.arg is not None}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, variables)
        if isinstance(value, (int, float)):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Name) and node.id in variables:
        return variables[node.id]
    raise ConversionError(
        f"the checkpoint's config text, line {getattr(node, 'lineno', '?')}: cannot read "
        f"{ast.unparse(node)[:60]!r} as a literal"
    )


# --- the plan --------------------------------------------------------------------------------


@dataclass
class ConfigPlan:
    """Detectron2 keys for a converted checkpoint.

    Attributes:
        settings: ``(key, value, source)``: the Detectron2 key, its value, and where the value
            came from (an mmdetection config key, ``weights: <key>``, or ``assumed``).
        assumptions: one line per value that neither the weights nor a config determined.
        not_carried: training-only mmdetection settings that the config does not reproduce.
        num_ratios, num_scales: anchors per location of the anchor head (for the channel order).
        levels: the FPN levels, finest first (``["p2", ..., "p6"]``).
    """

    settings: List[Tuple[str, Any, str]] = field(default_factory=list)
    assumptions: List[str] = field(default_factory=list)
    not_carried: List[str] = field(default_factory=list)
    num_ratios: int = 3
    num_scales: int = 1
    levels: List[str] = field(default_factory=list)

    def set(self, key: str, value: Any, source: str) -> None:
        self.settings = [s for s in self.settings if s[0] != key]
        self.settings.append((key, value, source))

    def assume(self, key: str, value: Any, reason: str) -> None:
        self.set(key, value, "assumed")
        self.assumptions.append(f"{key} = {value!r} ({reason})")

    def value(self, key: str) -> Any:
        for k, v, _ in self.settings:
            if k == key:
                return v
        raise KeyError(key)


class _Config:
    """An mmdetection config dict, read by dotted keys; ``None`` when there is no config."""

    def __init__(self, variables: Optional[Dict[str, Any]]):
        self.variables = variables

    def __bool__(self) -> bool:
        return self.variables is not None

    def get(self, key: str, default: Any = None) -> Any:
        node: Any = self.variables
        for part in key.split("."):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                return default
        return node


def _norm_type(cfg: Optional[dict]) -> Optional[str]:
    return None if not cfg else str(cfg.get("type"))


# Detectron2's GroupNorm (detectron2.layers.get_norm) has 32 groups.
_D2_GN_GROUPS = 32


def _d2_norm(key: str, norm_cfg: Optional[dict], abbr: Optional[str], *, backbone: bool, plan: ConfigPlan) -> str:
    """Detectron2's NORM for an mmdetection ``norm_cfg`` (or, without a config, for the weights'
    norm layer abbreviation ``bn`` / ``gn`` / None)."""
    if norm_cfg is None and abbr is None:
        return ""
    kind = _norm_type(norm_cfg) if norm_cfg else {"bn": "BN", "gn": "GN"}[abbr]
    if kind == "GN":
        groups = norm_cfg.get("num_groups") if norm_cfg else None
        if norm_cfg is None:
            plan.assumptions.append(f"{key}: GroupNorm with {_D2_GN_GROUPS} groups (not stored in the weights)")
        elif groups != _D2_GN_GROUPS:
            raise ConversionError(f"{key}.num_groups = {groups}: Detectron2's GroupNorm has {_D2_GN_GROUPS} groups")
        return "GN"
    if kind in ("BN", "SyncBN", "BN2d", "MMSyncBN", "NaiveSyncBN"):
        if backbone:
            frozen = norm_cfg is None or norm_cfg.get("requires_grad") is False
            if norm_cfg is None:
                plan.assumptions.append(f"{key}: batch norm frozen (mmdetection's norm_eval=True)")
            return "FrozenBN" if frozen else ("SyncBN" if "Sync" in kind else "BN")
        return "SyncBN" if "Sync" in kind else "BN"
    raise ConversionError(f"{key}.type = {kind!r}: Detectron2 mirrors BN, SyncBN and GN (32 groups) only")


# --- the settings ----------------------------------------------------------------------------

_LEVELS = {4: "p2", 8: "p3", 16: "p4", 32: "p5", 64: "p6", 128: "p7"}
_STAGES = ("res2", "res3", "res4", "res5")


def detectron2_settings(layout: dict, variables: Optional[Dict[str, Any]], meta: dict) -> ConfigPlan:
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
    cfg = _Config(variables)
    plan = ConfigPlan()
    model = "model." if cfg.get("model") is not None else ""
    _input(plan, cfg, model)
    _backbone(plan, cfg, layout, model)
    _neck(plan, cfg, layout, model)
    if layout["kind"] == "faster-rcnn":
        _rpn(plan, cfg, layout, model)
        _roi_head(plan, cfg, layout, model)
    else:
        _retina_head(plan, cfg, layout, model)
    _classes(plan, cfg, layout, meta)
    plan.set("MODEL.MASK_ON", False, "the converter converts box detectors")
    return plan


def _input(plan: ConfigPlan, cfg: _Config, model: str) -> None:
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


def _resize_scale(cfg: _Config, split: str) -> Optional[Tuple[Tuple[int, int], str]]:
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


def _backbone(plan: ConfigPlan, cfg: _Config, layout: dict, model: str) -> None:
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
        if b.get("depth") not in (None, layout["depth"]):
            raise ConversionError(f"{key}.depth = {b['depth']} but the weights hold a ResNet-{layout['depth']}")
        if tuple(b.get("dilations", (1, 1, 1, 1))) != (1, 1, 1, 1):
            raise ConversionError(f"{key}.dilations = {b['dilations']}: only undilated ResNets are mirrored")
    plan.set("MODEL.RESNETS.DEPTH", layout["depth"], f"weights: backbone.layer1-4 ({layout['block']} blocks)")
    plan.set("MODEL.RESNETS.NUM_GROUPS", layout["groups"], "weights: backbone.layer1.0.conv2 groups")
    plan.set("MODEL.RESNETS.WIDTH_PER_GROUP", layout["width_per_group"], "weights: backbone.layer1.0.conv2")
    plan.set("MODEL.RESNETS.STEM_OUT_CHANNELS", layout["stem_channels"], "weights: backbone.conv1")
    plan.set("MODEL.RESNETS.RES2_OUT_CHANNELS", layout["stage_channels"][0], "weights: backbone.layer1")
    if layout["block"] == "bottleneck":
        if b and "style" in b:
            if b["style"] not in ("pytorch", "caffe"):
                raise ConversionError(f"{key}.style = {b['style']!r}: 'pytorch' or 'caffe'")
            plan.set("MODEL.RESNETS.STRIDE_IN_1X1", b["style"] == "caffe", f"{key}.style")
        else:
            plan.assume("MODEL.RESNETS.STRIDE_IN_1X1", False, "mmdetection's default style='pytorch'")
    norm_cfg = b.get("norm_cfg") if b else None
    if norm_cfg is not None and b.get("norm_eval", True) and _norm_type(norm_cfg) != "GN":
        norm_cfg = dict(norm_cfg, requires_grad=False)  # norm_eval: statistics and affine frozen in training
    plan.set("MODEL.RESNETS.NORM", _d2_norm(f"{key}.norm_cfg", norm_cfg, layout["backbone_norm"], backbone=True,
                                            plan=plan), f"{key}.norm_cfg" if norm_cfg else "weights: backbone.bn1/gn1")  # fmt: skip
    if b and "frozen_stages" in b:
        plan.set("MODEL.BACKBONE.FREEZE_AT", max(int(b["frozen_stages"]) + 1, 0), f"{key}.frozen_stages")
    else:
        plan.assume("MODEL.BACKBONE.FREEZE_AT", 2, "mmdetection's default frozen_stages=1")


def _neck(plan: ConfigPlan, cfg: _Config, layout: dict, model: str) -> None:
    neck = cfg.get(model + "neck")
    fpn_key = model + ("neck.0" if isinstance(neck, list) else "neck")
    fpn = cfg.get(fpn_key) or {}
    if cfg and fpn and fpn.get("type") not in ("FPN", "mmdet.FPN"):
        raise ConversionError(f"{fpn_key}.type = {fpn.get('type')!r}: the converter mirrors FPN (+ BFP) necks")
    first, count = layout["first_stage"], layout["num_lateral"]
    in_features = list(_STAGES[first - 2 : first - 2 + count])
    if first - 2 + count != 4:
        raise ConversionError(f"{fpn_key}: the FPN's laterals end before C5 (end_level): Detectron2's FPN reads up to res5")
    plan.set("MODEL.RESNETS.OUT_FEATURES", in_features, f"weights: {layout['neck']}lateral_convs in channels")
    plan.set("MODEL.FPN.IN_FEATURES", in_features, f"weights: {layout['neck']}lateral_convs in channels")
    plan.set("MODEL.FPN.OUT_CHANNELS", layout["fpn_channels"], f"weights: {layout['neck']}lateral_convs out channels")
    plan.set("MODEL.FPN.NORM", _d2_norm(f"{fpn_key}.norm_cfg", fpn.get("norm_cfg") if fpn else None,
                                        layout["fpn_norm"], backbone=False, plan=plan),
             f"{fpn_key}.norm_cfg" if fpn.get("norm_cfg") else f"weights: {layout['neck']}lateral_convs.0")  # fmt: skip
    if fpn.get("upsample_cfg", {}).get("mode", "nearest") != "nearest":
        raise ConversionError(f"{fpn_key}.upsample_cfg = {fpn['upsample_cfg']}: Detectron2's FPN upsamples 'nearest'")
    num_levels = count + layout["num_extra"]
    strides = [2 ** (first + i) for i in range(num_levels)]
    if cfg and fpn.get("num_outs") not in (None, num_levels):
        raise ConversionError(f"{fpn_key}.num_outs = {fpn['num_outs']} but the weights hold {num_levels} levels")
    plan.levels = [_LEVELS[s] for s in strides]
    if layout["kind"] == "retinanet":
        if num_levels != 5 or layout["extra"] != "conv":
            raise ConversionError(
                f"{fpn_key}: a RetinaNet FPN with {num_levels} levels and {layout['extra']} extra levels; "
                "Detectron2's has P3-P7 with two extra convolutions"
            )
        mode = fpn.get("add_extra_convs", None) if fpn else None
        if mode is None or mode is True:
            mode = "on_input" if layout["extra_in_channels"] == layout["stage_channels"][3] else "on_output"
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
        if num_levels != 5 or layout["extra"] != "pool" or first != 2:
            raise ConversionError(
                f"{fpn_key}: {num_levels} levels from C{first} with {layout['extra']} extra levels; Detectron2's "
                "Faster R-CNN FPN has P2-P5 and P6 by max pooling"
            )
        builder, fpn_source = "build_resnet_fpn_backbone", f"{fpn_key}.type"
    if not layout["bfp"]:
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
    plan.set("MODEL.LIBRA.BFP.REFINE_TYPE", layout["refine"], "weights: neck.1.refine")
    if bfp and "refine_level" in bfp:
        plan.set("MODEL.LIBRA.BFP.REFINE_LEVEL", int(bfp["refine_level"]), f"{bfp_key}.refine_level")
    else:
        plan.assume("MODEL.LIBRA.BFP.REFINE_LEVEL", plan.levels.index("p4"), "P4, as mmdetection's Libra configs")


def _anchors(plan: ConfigPlan, head: dict, key: str, num_anchors: int, retina: bool) -> None:
    """MODEL.ANCHOR_GENERATOR.* from an mmdetection AnchorGenerator (or its defaults)."""
    gen = head.get("anchor_generator") if head else None
    levels = plan.levels
    strides = [{v: k for k, v in _LEVELS.items()}[name] for name in levels]
    if gen:
        gkey = f"{key}.anchor_generator"
        if gen.get("type", "AnchorGenerator") not in ("AnchorGenerator", "mmdet.AnchorGenerator"):
            raise ConversionError(f"{gkey}.type = {gen.get('type')!r}: Detectron2 has the plain anchor generator")
        if [s if isinstance(s, (int, float)) else s[0] for s in gen.get("strides", strides)] != strides:
            raise ConversionError(f"{gkey}.strides = {gen.get('strides')}: the FPN levels have strides {strides}")
        base = gen.get("base_sizes") or strides
        if gen.get("scales") is not None:
            scales = [float(s) for s in gen["scales"]]
        else:
            octave, per = gen.get("octave_base_scale"), gen.get("scales_per_octave")
            if octave is None or per is None:
                raise ConversionError(f"{gkey}: neither scales nor octave_base_scale / scales_per_octave")
            scales = [float(octave) * 2 ** (i / per) for i in range(per)]
        ratios = [float(r) for r in gen.get("ratios", [0.5, 1.0, 2.0])]
        if gen.get("scale_major", True) is False:
            raise ConversionError(f"{gkey}.scale_major = False: not mirrored")
        offset = float(gen.get("center_offset", 0.0))
        source = gkey
    else:
        ratios = [0.5, 1.0, 2.0]
        scales = [4.0 * 2 ** (i / 3) for i in range(3)] if retina else [8.0]
        base, offset, source = strides, 0.0, None
        plan.assumptions.append(
            f"anchors: mmdetection's default {'RetinaNet' if retina else 'RPN'} anchors, scales "
            f"{[round(s, 4) for s in scales]} x stride, ratios {ratios}"
        )
    if len(ratios) * len(scales) != num_anchors:
        raise ConversionError(
            f"{key}: {len(scales)} scales x {len(ratios)} ratios, but the weights predict {num_anchors} anchors per location"
        )
    sizes = [[b * s for s in scales] for b in base]
    plan.num_ratios, plan.num_scales = len(ratios), len(scales)
    set_ = plan.set if source else (lambda k, v, _: plan.set(k, v, "assumed"))
    set_("MODEL.ANCHOR_GENERATOR.SIZES", sizes, f"{source}.scales x strides" if source else "")
    set_("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [ratios], f"{source}.ratios" if source else "")
    set_("MODEL.ANCHOR_GENERATOR.OFFSET", offset, f"{source}.center_offset" if source else "")


def _coder_weights(coder: Optional[dict], key: str, default: Sequence[float]) -> Tuple[List[float], Optional[str]]:
    if not coder:
        return [1.0 / s for s in default], None
    if coder.get("type", "DeltaXYWHBBoxCoder") not in ("DeltaXYWHBBoxCoder", "mmdet.DeltaXYWHBBoxCoder"):
        raise ConversionError(f"{key}.bbox_coder.type = {coder.get('type')!r}: Detectron2 has DeltaXYWHBBoxCoder's deltas")
    if any(float(m) != 0.0 for m in coder.get("target_means", [0.0] * 4)):
        raise ConversionError(f"{key}.bbox_coder.target_means = {coder['target_means']}: Detectron2's deltas have mean 0")
    stds = [float(s) for s in coder.get("target_stds", default)]
    return [1.0 / s for s in stds], f"{key}.bbox_coder.target_stds"


def _nms_threshold(nms: Optional[dict], key: str) -> Optional[float]:
    if not nms:
        return None
    if nms.get("type", "nms") != "nms":
        raise ConversionError(f"{key}.type = {nms['type']!r}: Detectron2 tests with plain NMS")
    return float(nms.get("iou_threshold", nms.get("iou_thr", 0.5)))


def _test_cfg(cfg: _Config, model: str, part: str) -> Tuple[Optional[dict], str]:
    for key in (f"{model}test_cfg.{part}" if part else f"{model}test_cfg", f"test_cfg.{part}" if part else "test_cfg"):
        value = cfg.get(key)
        if isinstance(value, dict):
            return value, key
    return None, ""


def _set_or_assume(plan: ConfigPlan, key: str, value: Any, source: str, default: Any, reason: str) -> None:
    if value is None:
        plan.assume(key, default, reason)
    else:
        plan.set(key, value, source)


def _rpn_sampler(plan: ConfigPlan, cfg: _Config, layout: dict, model: str) -> None:
    """Detectron2's RPN, or ``LibraRPN`` with the checkpoint's bound on negatives per positive
    (``train_cfg.rpn.sampler.neg_pos_ub``), so that fine-tuning samples anchors as it was trained."""
    skey = f"{model}train_cfg.rpn.sampler"
    sampler = cfg.get(skey)
    if sampler is None:
        skey, sampler = "train_cfg.rpn.sampler", cfg.get("train_cfg.rpn.sampler")
    if isinstance(sampler, dict):
        bound = float(sampler.get("neg_pos_ub", -1))
        source = f"{skey}.neg_pos_ub"
        plan.set("MODEL.PROPOSAL_GENERATOR.NAME", "LibraRPN" if bound >= 0 else "RPN", source)
        plan.set("MODEL.LIBRA.RPN.NEG_POS_UB", bound if bound >= 0 else -1.0, source)
    elif layout["bfp"]:
        plan.assume("MODEL.PROPOSAL_GENERATOR.NAME", "LibraRPN", "mmdetection's Libra R-CNN RPN sampler, for fine-tuning")
        plan.assume("MODEL.LIBRA.RPN.NEG_POS_UB", 5.0, "mmdetection's Libra R-CNN RPN sampler (neg_pos_ub=5)")
    else:
        plan.assume("MODEL.PROPOSAL_GENERATOR.NAME", "RPN", "mmdetection's default RPN sampler (no bound)")
        plan.assume("MODEL.LIBRA.RPN.NEG_POS_UB", -1.0, "mmdetection's default RPN sampler (no bound)")


def _rpn(plan: ConfigPlan, cfg: _Config, layout: dict, model: str) -> None:
    key = model + "rpn_head"
    head = cfg.get(key) or {}
    levels = plan.levels
    if head.get("loss_cls", {}).get("use_sigmoid", True) is False:
        raise ConversionError(f"{key}.loss_cls.use_sigmoid = False: Detectron2's RPN has one sigmoid logit per anchor")
    _rpn_sampler(plan, cfg, layout, model)
    plan.set("MODEL.RPN.IN_FEATURES", levels, "weights: the FPN levels")
    if layout["rpn_feat"] != layout["fpn_channels"]:
        plan.set("MODEL.RPN.CONV_DIMS", [layout["rpn_feat"]], "weights: rpn_head.rpn_conv")
    _anchors(plan, head, key, layout["rpn_anchors"], retina=False)
    weights, source = _coder_weights(head.get("bbox_coder"), key, [1.0] * 4)
    _set_or_assume(plan, "MODEL.RPN.BBOX_REG_WEIGHTS", weights if source else None, source, weights, "mmdetection's RPN coder")
    test, tkey = _test_cfg(cfg, model, "rpn")
    test = test or {}
    default = "mmdetection's default RPN test settings"
    _set_or_assume(plan, "MODEL.RPN.PRE_NMS_TOPK_TEST", test.get("nms_pre"), f"{tkey}.nms_pre", 1000, default)
    post = test.get("max_per_img", test.get("max_num"))
    _set_or_assume(plan, "MODEL.RPN.POST_NMS_TOPK_TEST", post, f"{tkey}.max_per_img", 1000, default)
    thr = _nms_threshold(test.get("nms"), f"{tkey}.nms") if "nms" in test else test.get("nms_thr")
    _set_or_assume(plan, "MODEL.RPN.NMS_THRESH", thr, f"{tkey}.nms.iou_threshold", 0.7, default)
    if test.get("nms_across_levels"):
        raise ConversionError(f"{tkey}.nms_across_levels = True: Detectron2's RPN applies NMS per level")
    _set_or_assume(plan, "MODEL.PROPOSAL_GENERATOR.MIN_SIZE", test.get("min_bbox_size"), f"{tkey}.min_bbox_size", 0, default)
    proposal = cfg.get(model + "train_cfg.rpn_proposal") or cfg.get("train_cfg.rpn_proposal")
    if proposal:
        pkey = (model if cfg.get(model + "train_cfg.rpn_proposal") else "") + "train_cfg.rpn_proposal"
        plan.set("MODEL.RPN.PRE_NMS_TOPK_TRAIN", proposal.get("nms_pre", 2000), f"{pkey}.nms_pre")
        plan.set("MODEL.RPN.POST_NMS_TOPK_TRAIN", proposal.get("max_per_img", proposal.get("max_num", 1000)),
                 f"{pkey}.max_per_img")  # fmt: skip
    _loss(plan, head.get("loss_bbox"), f"{key}.loss_bbox", "MODEL.RPN.BBOX_REG_LOSS_TYPE", "MODEL.RPN.SMOOTH_L1_BETA")


def _loss(plan: ConfigPlan, loss: Optional[dict], key: str, type_key: str, beta_key: str, libra: bool = False) -> None:
    """A box loss for fine-tuning, or a line in ``not_carried``."""
    if not loss:
        return
    kind = str(loss.get("type", "")).replace("mmdet.", "")
    if kind == "L1Loss":
        plan.set(type_key, "smooth_l1", f"{key}.type (L1 = smooth L1 with beta 0)")
        plan.set(beta_key, 0.0, f"{key}.type")
    elif kind == "SmoothL1Loss":
        plan.set(type_key, "smooth_l1", f"{key}.type")
        plan.set(beta_key, float(loss.get("beta", 1.0)), f"{key}.beta")
    elif kind == "BalancedL1Loss" and libra:
        plan.set(type_key, "balanced_l1", f"{key}.type")
        for name, default in (("alpha", 0.5), ("gamma", 1.5), ("beta", 1.0)):
            plan.set(f"MODEL.LIBRA.BALANCED_L1.{name.upper()}", float(loss.get(name, default)), f"{key}.{name}")
        plan.set("MODEL.LIBRA.BALANCED_L1.VARIANT", "mmdet", f"{key}.type (mmdetection's formula)")
    else:
        plan.not_carried.append(f"{key} = {kind} (training only)")
    if float(loss.get("loss_weight", 1.0)) != 1.0:
        plan.not_carried.append(f"{key}.loss_weight = {loss['loss_weight']} (training only)")


def _roi_head(plan: ConfigPlan, cfg: _Config, layout: dict, model: str) -> None:
    key = model + "roi_head"
    roi = cfg.get(key) or {}
    if roi and roi.get("type") not in ("StandardRoIHead", "mmdet.StandardRoIHead"):
        raise ConversionError(f"{key}.type = {roi.get('type')!r}: the converter mirrors StandardRoIHead")
    extractor = roi.get("bbox_roi_extractor", {}) if roi else {}
    ekey = f"{key}.bbox_roi_extractor"
    strides = extractor.get("featmap_strides") if extractor else None
    in_features = [_LEVELS[s] for s in strides] if strides else plan.levels[:4]
    if not strides:
        plan.assumptions.append(f"{ekey}.featmap_strides = [4, 8, 16, 32] (P2-P5)")
    if extractor and extractor.get("finest_scale", 56) != 56:
        raise ConversionError(f"{ekey}.finest_scale = {extractor['finest_scale']}: Detectron2's level rule has 224 at P4 (56)")
    libra = layout["bfp"]
    bbox = roi.get("bbox_head", {}) if roi else {}
    bkey = f"{key}.bbox_head"
    sampler = cfg.get(model + "train_cfg.rcnn.sampler") or cfg.get("train_cfg.rcnn.sampler") or {}
    iou_balanced = sampler.get("neg_sampler", {}).get("type") == "IoUBalancedNegSampler"
    if cfg:
        libra = iou_balanced or str(bbox.get("loss_bbox", {}).get("type")) == "BalancedL1Loss"
    plan.set("MODEL.META_ARCHITECTURE", "GeneralizedRCNN", f"{model}type")
    plan.set("MODEL.ROI_HEADS.NAME", "LibraROIHeads" if libra else "StandardROIHeads",
             f"{model}train_cfg.rcnn.sampler" if cfg else "weights: neck.1 (the BFP: a Libra R-CNN)")  # fmt: skip
    plan.set("MODEL.ROI_HEADS.IN_FEATURES", in_features, f"{ekey}.featmap_strides" if strides else "assumed")
    plan.set("MODEL.ROI_HEADS.NUM_CLASSES", layout["num_classes"], "weights: roi_head.bbox_head.fc_cls")
    layer = extractor.get("roi_layer", {}) if extractor else {}
    if layer and layer.get("type", "RoIAlign") not in ("RoIAlign", "mmcv.RoIAlign"):
        raise ConversionError(f"{ekey}.roi_layer.type = {layer.get('type')!r}: Detectron2 pools with RoIAlign")
    if layer and layer.get("pool_mode", "avg") != "avg":
        raise ConversionError(f"{ekey}.roi_layer.pool_mode = {layer['pool_mode']!r}: Detectron2's RoIAlign averages")
    resolution = layer.get("output_size", layout["roi_resolution"]) if layer else layout["roi_resolution"]
    if resolution != layout["roi_resolution"]:
        raise ConversionError(f"{ekey}.roi_layer.output_size = {resolution} but the box head takes {layout['roi_resolution']}")
    plan.set("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", resolution, "weights: roi_head.bbox_head's first layer")
    _set_or_assume(plan, "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", layer.get("sampling_ratio") if layer else None,
                   f"{ekey}.roi_layer.sampling_ratio", 0, "mmdetection's default RoIAlign")  # fmt: skip
    aligned = layer.get("aligned", True) if layer else None
    _set_or_assume(plan, "MODEL.ROI_BOX_HEAD.POOLER_TYPE", None if aligned is None else ("ROIAlignV2" if aligned else "ROIAlign"),
                   f"{ekey}.roi_layer.aligned", "ROIAlignV2", "mmdetection's default RoIAlign(aligned=True)")  # fmt: skip
    if bbox:
        kind = str(bbox.get("type")).replace("mmdet.", "")
        if kind not in ("Shared2FCBBoxHead", "Shared4Conv1FCBBoxHead", "ConvFCBBoxHead"):
            raise ConversionError(f"{bkey}.type = {kind!r}: the converter mirrors (Shared)ConvFCBBoxHead")
        for name in ("num_cls_convs", "num_cls_fcs", "num_reg_convs", "num_reg_fcs"):
            if bbox.get(name, 0):
                raise ConversionError(f"{bkey}.{name} = {bbox[name]}: Detectron2's box head has shared layers only")
        if bbox.get("with_avg_pool"):
            raise ConversionError(f"{bkey}.with_avg_pool = True: not in Detectron2's box head")
        if bbox.get("loss_cls", {}).get("use_sigmoid"):
            raise ConversionError(f"{bkey}.loss_cls.use_sigmoid = True: Detectron2's box head uses softmax")
    plan.set("MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead", "weights: roi_head.bbox_head")
    plan.set("MODEL.ROI_BOX_HEAD.NUM_CONV", layout["roi_convs"], "weights: roi_head.bbox_head.shared_convs")
    if layout["roi_convs"]:
        plan.set("MODEL.ROI_BOX_HEAD.CONV_DIM", layout["roi_conv_dim"], "weights: roi_head.bbox_head.shared_convs")
        plan.set("MODEL.ROI_BOX_HEAD.NORM", _d2_norm(f"{bkey}.norm_cfg", bbox.get("norm_cfg") if bbox else None,
                                                     layout["roi_norm"], backbone=False, plan=plan),
                 f"{bkey}.norm_cfg")  # fmt: skip
    plan.set("MODEL.ROI_BOX_HEAD.NUM_FC", layout["roi_fcs"], "weights: roi_head.bbox_head.shared_fcs")
    if layout["roi_fcs"]:
        plan.set("MODEL.ROI_BOX_HEAD.FC_DIM", layout["roi_fc_dim"], "weights: roi_head.bbox_head.shared_fcs")
    plan.set("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", layout["class_agnostic"], "weights: roi_head.bbox_head.fc_reg")
    weights, source = _coder_weights(bbox.get("bbox_coder") if bbox else None, bkey, [0.1, 0.1, 0.2, 0.2])
    _set_or_assume(plan, "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", weights if source else None, source, weights,
                   "mmdetection's box coder stds (0.1, 0.1, 0.2, 0.2)")  # fmt: skip
    test, tkey = _test_cfg(cfg, model, "rcnn")
    test = test or {}
    default = "mmdetection's default R-CNN test settings"
    _set_or_assume(plan, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", test.get("score_thr"), f"{tkey}.score_thr", 0.05, default)
    thr = _nms_threshold(test.get("nms"), f"{tkey}.nms")
    _set_or_assume(plan, "MODEL.ROI_HEADS.NMS_THRESH_TEST", thr, f"{tkey}.nms.iou_threshold", 0.5, default)
    _set_or_assume(plan, "TEST.DETECTIONS_PER_IMAGE", test.get("max_per_img"), f"{tkey}.max_per_img", 100, default)
    # Training settings, for fine-tuning.
    rcnn = cfg.get(model + "train_cfg.rcnn") or cfg.get("train_cfg.rcnn") or {}
    if sampler:
        skey = f"{model}train_cfg.rcnn.sampler"
        plan.set("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", int(sampler.get("num", 512)), f"{skey}.num")
        plan.set("MODEL.ROI_HEADS.POSITIVE_FRACTION", float(sampler.get("pos_fraction", 0.25)), f"{skey}.pos_fraction")
        plan.set("MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", bool(sampler.get("add_gt_as_proposals", True)),
                 f"{skey}.add_gt_as_proposals")  # fmt: skip
        if iou_balanced:
            neg = sampler["neg_sampler"]
            plan.set("MODEL.LIBRA.SAMPLER.POS", "instance_balanced"
                     if sampler.get("pos_sampler", {}).get("type") == "InstanceBalancedPosSampler" else "random",
                     f"{skey}.pos_sampler.type")  # fmt: skip
            plan.set("MODEL.LIBRA.SAMPLER.NEG", "iou_balanced", f"{skey}.neg_sampler.type")
            plan.set("MODEL.LIBRA.SAMPLER.NUM_BINS", int(neg.get("num_bins", 3)), f"{skey}.neg_sampler.num_bins")
            plan.set("MODEL.LIBRA.SAMPLER.BINNING", "mmdet", f"{skey}.neg_sampler.type (mmdetection's bins)")
            plan.set("MODEL.LIBRA.SAMPLER.FLOOR_THR", float(neg.get("floor_thr", -1)), f"{skey}.neg_sampler.floor_thr")
            plan.set("MODEL.LIBRA.SAMPLER.FLOOR_FRACTION", float(neg.get("floor_fraction", 0)),
                     f"{skey}.neg_sampler.floor_fraction")  # fmt: skip
        elif libra:
            plan.set("MODEL.LIBRA.SAMPLER.POS", "random", f"{skey}.type")
            plan.set("MODEL.LIBRA.SAMPLER.NEG", "random", f"{skey}.type")
    elif libra and not cfg:
        plan.assume("MODEL.LIBRA.SAMPLER.BINNING", "mmdet", "mmdetection's Libra R-CNN sampler, for fine-tuning")
        plan.assume("MODEL.LIBRA.BALANCED_L1.VARIANT", "mmdet", "mmdetection's balanced L1, for fine-tuning")
    assigner = rcnn.get("assigner") if rcnn else None
    if assigner and assigner.get("pos_iou_thr") is not None:
        pos, neg = float(assigner["pos_iou_thr"]), float(assigner.get("neg_iou_thr", assigner["pos_iou_thr"]))
        if pos == neg:
            plan.set("MODEL.ROI_HEADS.IOU_THRESHOLDS", [pos], f"{model}train_cfg.rcnn.assigner.pos_iou_thr")
        else:
            plan.not_carried.append(f"{model}train_cfg.rcnn.assigner: an ignore band {neg}-{pos} (training only)")
    _loss(plan, bbox.get("loss_bbox") if bbox else None, f"{bkey}.loss_bbox", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE",
          "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", libra=True)  # fmt: skip
    if libra and plan.value("MODEL.ROI_HEADS.NAME") == "LibraROIHeads" and not any(
        k == "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE" for k, _, _ in plan.settings
    ):
        plan.assume("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "balanced_l1", "Libra R-CNN's box loss, for fine-tuning")


def _retina_head(plan: ConfigPlan, cfg: _Config, layout: dict, model: str) -> None:
    key = model + "bbox_head"
    head = cfg.get(key) or {}
    if head and str(head.get("type")).replace("mmdet.", "") != "RetinaHead":
        raise ConversionError(f"{key}.type = {head.get('type')!r}: the converter mirrors RetinaHead")
    if head and head.get("feat_channels", layout["fpn_channels"]) != layout["fpn_channels"]:
        raise ConversionError(f"{key}.feat_channels = {head['feat_channels']}: Detectron2's RetinaNet head keeps the FPN's channels")
    loss = head.get("loss_bbox", {}) if head else {}
    libra = str(loss.get("type")) == "BalancedL1Loss" if head else layout["bfp"]
    plan.set("MODEL.META_ARCHITECTURE", "LibraRetinaNet" if libra else "RetinaNet",
             f"{key}.loss_bbox.type" if head else "weights: neck.1 (the BFP: a Libra RetinaNet)")  # fmt: skip
    plan.set("MODEL.RETINANET.IN_FEATURES", plan.levels, "weights: the FPN levels")
    plan.set("MODEL.RETINANET.NUM_CLASSES", layout["num_classes"], "weights: bbox_head.retina_cls")
    plan.set("MODEL.RETINANET.NUM_CONVS", layout["retina_convs"], "weights: bbox_head.cls_convs")
    norm = head.get("norm_cfg") if head else None
    if layout["retina_norm"] == "bn":
        raise ConversionError(
            f"{key}.norm_cfg = BN: mmdetection shares the head's batch norm over levels, Detectron2 keeps one per level"
        )
    plan.set("MODEL.RETINANET.NORM", _d2_norm(f"{key}.norm_cfg", norm, layout["retina_norm"], backbone=False, plan=plan),
             f"{key}.norm_cfg" if norm else "weights: bbox_head.cls_convs.0")  # fmt: skip
    _anchors(plan, head, key, layout["retina_anchors"], retina=True)
    weights, source = _coder_weights(head.get("bbox_coder") if head else None, key, [1.0] * 4)
    _set_or_assume(plan, "MODEL.RETINANET.BBOX_REG_WEIGHTS", weights if source else None, source, weights,
                   "mmdetection's RetinaNet coder")  # fmt: skip
    test, tkey = _test_cfg(cfg, model, "")
    test = test or {}
    default = "mmdetection's default RetinaNet test settings"
    _set_or_assume(plan, "MODEL.RETINANET.TOPK_CANDIDATES_TEST", test.get("nms_pre"), f"{tkey}.nms_pre", 1000, default)
    _set_or_assume(plan, "MODEL.RETINANET.SCORE_THRESH_TEST", test.get("score_thr"), f"{tkey}.score_thr", 0.05, default)
    thr = _nms_threshold(test.get("nms"), f"{tkey}.nms")
    _set_or_assume(plan, "MODEL.RETINANET.NMS_THRESH_TEST", thr, f"{tkey}.nms.iou_threshold", 0.5, default)
    _set_or_assume(plan, "TEST.DETECTIONS_PER_IMAGE", test.get("max_per_img"), f"{tkey}.max_per_img", 100, default)
    focal = head.get("loss_cls", {}) if head else {}
    if focal:
        if str(focal.get("type")).replace("mmdet.", "") != "FocalLoss":
            plan.not_carried.append(f"{key}.loss_cls = {focal.get('type')} (training only)")
        else:
            plan.set("MODEL.RETINANET.FOCAL_LOSS_ALPHA", float(focal.get("alpha", 0.25)), f"{key}.loss_cls.alpha")
            plan.set("MODEL.RETINANET.FOCAL_LOSS_GAMMA", float(focal.get("gamma", 2.0)), f"{key}.loss_cls.gamma")
    _loss(plan, loss or None, f"{key}.loss_bbox", "MODEL.RETINANET.BBOX_REG_LOSS_TYPE",
          "MODEL.RETINANET.SMOOTH_L1_LOSS_BETA", libra=True)  # fmt: skip
    if libra and not head:
        plan.assume("MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "balanced_l1", "Libra RetinaNet's box loss, for fine-tuning")
        plan.assume("MODEL.LIBRA.BALANCED_L1.BETA", 0.11, "Libra RetinaNet's balanced L1 beta, for fine-tuning")
        plan.assume("MODEL.LIBRA.BALANCED_L1.VARIANT", "mmdet", "mmdetection's balanced L1, for fine-tuning")
    assigner = cfg.get(model + "train_cfg.assigner") or cfg.get("train_cfg.assigner")
    if assigner and assigner.get("pos_iou_thr") is not None:
        neg, pos = float(assigner.get("neg_iou_thr", 0.4)), float(assigner["pos_iou_thr"])
        plan.set("MODEL.RETINANET.IOU_THRESHOLDS", [neg, pos], f"{model}train_cfg.assigner")
        plan.set("MODEL.RETINANET.IOU_LABELS", [0, -1, 1], f"{model}train_cfg.assigner")


def _classes(plan: ConfigPlan, cfg: _Config, layout: dict, meta: dict) -> None:
    names, source = None, None
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    for value, where in ((dataset_meta.get("classes"), 'meta["dataset_meta"]["classes"]'),
                         (meta.get("CLASSES"), 'meta["CLASSES"]'),
                         (cfg.get("train_dataloader.dataset.metainfo.classes"), "train_dataloader.dataset.metainfo"),
                         (cfg.get("classes"), "classes"),
                         (cfg.get("data.train.classes"), "data.train.classes")):  # fmt: skip
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            names, source = [str(v) for v in value], where
            break
    if names is None:
        plan.assumptions.append("class names: none in the checkpoint (MODEL.LIBRA.CLASS_NAMES left empty)")
        return
    if len(names) != layout["num_classes"]:
        raise ConversionError(f"{source} names {len(names)} classes but the weights predict {layout['num_classes']}")
    plan.set("MODEL.LIBRA.CLASS_NAMES", names, source)


# --- writing -----------------------------------------------------------------------------------


def _yaml_value(value: Any) -> str:
    import yaml

    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(round(value, 10)) if math.isfinite(value) else str(value)
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()


def write_config(path: str, plan: ConfigPlan, header: Sequence[str]) -> None:
    """Write ``plan`` as a Detectron2 YAML config at ``path`` (atomically), each key with its source.

    The file starts with ``header`` and the assumptions as comments; ``VERSION: 2``.
    """
    tree: Dict[str, Any] = {}
    for key, value, source in plan.settings:
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = (value, source)
    lines = [f"# {h}" for h in header]
    if plan.assumptions:
        lines.append("# Assumed (neither the weights nor a config in the checkpoint say):")
        lines += [f"#   - {a}" for a in plan.assumptions]
    if plan.not_carried:
        lines.append("# Not carried over (training only):")
        lines += [f"#   - {a}" for a in plan.not_carried]

    def emit(node: Dict[str, Any], indent: int) -> None:
        for name, item in node.items():
            if isinstance(item, dict):
                lines.append("  " * indent + f"{name}:")
                emit(item, indent + 1)
            else:
                value, source = item
                comment = f"  # {source}" if source else ""
                lines.append("  " * indent + f"{name}: {_yaml_value(value)}{comment}")

    emit(tree, 0)
    lines.append("VERSION: 2")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
