"""Convert mmdetection 2.x/3.x checkpoints of (Libra) Faster R-CNN and (Libra) RetinaNet.

Usage::

    python -m libra_rcnn.convert_mmdet INPUT.pth OUTPUT.pth

reads an mmdetection checkpoint (a ``state_dict`` with or without ``meta``, or a bare state
dict) and writes two files: ``OUTPUT.pth``, a Detectron2 checkpoint
(``{"model": ..., "__author__": ..., "matching_heuristics": False}``), and ``OUTPUT.yaml``, the
config of the Detectron2 model that computes what the mmdetection model computes, with
``MODEL.WEIGHTS`` pointing at ``OUTPUT.pth``. ``DetectionCheckpointer`` loads the weights into
that model with no missing or unexpected keys (checked before anything is written).

What is converted (docs/pretrained_mmdet.md):

- backbones: ResNet-18/34 (basic blocks), ResNet-50/101/152 and ResNeXt (bottlenecks), with
  BN, SyncBN or GN (frozen BN stays ``FrozenBatchNorm2d``, GN stays trainable);
- necks: an FPN of any width, with or without a norm, and the BFP (``neck.1``) with a
  non-local, conv or no refinement at any refine level;
- heads: RPN + box head with any fc width, shared convs and number of classes, or RetinaNet's
  head with any number of convs, norm and classes, with the anchors of its config.

The config comes from the checkpoint (mmengine keeps it in ``meta["cfg"]``, mmdetection 2.x in
``meta["config"]``; :mod:`libra_rcnn.mmdet_config` reads and maps it). Without one, what the
weights do not determine is taken from mmdetection's defaults and every such value is listed
in the YAML file and printed. mmdetection orders a location's anchors ratio-major (ratio, then
scale), Detectron2's ``DefaultAnchorGenerator`` size-major: the anchor heads' output channels
are permuted so that Detectron2's own anchors line up with them.

Whatever cannot be mirrored fails with one line that names the mmdetection key, and nothing is
written. mmdetection 1.x checkpoints (the 2019 model zoo: boxes with the +1 pixel convention,
the box head at the top level) are refused with a message saying so.
"""
import argparse
import dataclasses
import math
import os
import pickle
import re
import sys
import types
from typing import Dict, List, Optional, Tuple

import torch

from .mmdet_config import ConfigPlan, ConversionError, detectron2_settings, read_config_text, write_config

__all__ = [
    "ConversionError",
    "load_mmdet_checkpoint",
    "weight_layout",
    "convert_state_dict",
    "anchor_order",
    "config_text",
    "convert",
    "main",
]


# --- reading -------------------------------------------------------------------------------

_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _Opaque:
    """Stands in for any other class in a checkpoint's extra entries (optimizer state, logs)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _TolerantUnpickler(pickle.Unpickler):
    """Unpickles tensors and plain containers; every other global becomes :class:`_Opaque`.

    mmengine's checkpoints hold objects of mmengine's own classes (message hub, history
    buffers) beside the weights; this reads the weights without mmengine and without running
    any other code from the file.
    """

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        return _Opaque


_tolerant_pickle = types.ModuleType("_tolerant_pickle")
_tolerant_pickle.Unpickler = _TolerantUnpickler
_tolerant_pickle.load = lambda f, **kwargs: _TolerantUnpickler(f, **kwargs).load()


def load_mmdet_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], dict]:
    """The (state dict, meta) of an mmdetection checkpoint file.

    Reads with ``torch.load(weights_only=True)``; files with other objects beside the weights
    (mmengine's training state) are read by an unpickler that builds tensors and plain
    containers only.

    Raises:
        ConversionError: if the file holds no state dict of tensors, or was written by
            mmdetection 1.x (``meta["mmdet_version"]`` 0.x/1.x).
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle)
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{path}: expected a dict (an mmdetection checkpoint), got {type(ckpt).__name__}")
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path}: no state dict of tensors (neither the file nor its 'state_dict' entry)")
    version = str(meta.get("mmdet_version", ""))
    if re.match(r"^[01]\.", version):
        raise ConversionError(_v1_message(path, f"meta['mmdet_version'] = {version!r}"))
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    return state, meta


def _v1_message(path: str, evidence: str) -> str:
    return (
        f"{path} was written by mmdetection 1.x ({evidence}). Its boxes use the +1 pixel convention "
        "and other anchors, which this converter does not reproduce; use the same model from "
        "mmdetection's v2.0 model zoo (docs/pretrained_mmdet.md lists the files), or upgrade it with "
        "mmdetection's tools/model_converters/upgrade_model_version.py first."
    )


# --- what the weights hold -----------------------------------------------------------------

_NORM = r"(bn|gn)"
_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def _norm_abbr(keys, prefix: str, suffix: str = "") -> Optional[str]:
    """``"bn"`` / ``"gn"`` when ``prefix + abbreviation + suffix`` holds a norm layer, else None."""
    for abbr in ("bn", "gn"):
        if f"{prefix}{abbr}{suffix}.weight" in keys:
            return abbr
    return None


def _count(keys, pattern: str) -> int:
    return sum(1 for k in keys if re.fullmatch(pattern, k))


def weight_layout(state: Dict[str, torch.Tensor]) -> dict:
    """What an mmdetection state dict holds, read from its keys and shapes alone.

    Returns a dict with ``kind`` (``"faster-rcnn"`` / ``"retinanet"``); ``bfp``, ``refine``;
    the ResNet's ``block`` (``"basic"`` / ``"bottleneck"``), ``depth``, ``groups``,
    ``width_per_group``, ``stem_channels``, ``stage_channels`` (C2-C5) and ``backbone_norm``
    (``"bn"`` / ``"gn"``); the FPN's ``neck`` prefix, ``first_stage`` (2 for C2), ``num_lateral``,
    ``fpn_channels``, ``fpn_norm``, ``extra`` (``"pool"`` / ``"conv"``), ``num_extra``,
    ``extra_in_channels``; the heads' sizes (``rpn_feat``, ``rpn_anchors``, ``roi_convs``,
    ``roi_conv_dim``, ``roi_norm``, ``roi_fcs``, ``roi_fc_dim``, ``roi_resolution``,
    ``class_agnostic``, ``retina_convs``, ``retina_norm``, ``retina_anchors``) and ``num_classes``.

    Raises:
        ConversionError: for a layout that is not a ResNet-FPN (Libra) Faster R-CNN or
            RetinaNet, naming the key.
    """
    keys = set(state)
    if "bbox_head.fc_cls.weight" in keys or any(k.startswith("bbox_head.shared_fcs.") for k in keys):
        raise ConversionError(_v1_message("the checkpoint", "its box head is 'bbox_head', not 'roi_head.bbox_head'"))
    if "rpn_head.rpn_cls.weight" in keys and "roi_head.bbox_head.fc_cls.weight" in keys:
        kind = "faster-rcnn"
    elif "bbox_head.retina_cls.weight" in keys:
        kind = "retinanet"
    else:
        raise ConversionError(
            "not a Faster R-CNN (rpn_head.rpn_cls + roi_head.bbox_head.fc_cls) nor a RetinaNet "
            "(bbox_head.retina_cls) checkpoint; keys it could not place: " + _sample(keys)
        )
    layout: dict = dict(kind=kind)
    # Backbone.
    if "backbone.conv1.weight" not in keys or "backbone.layer1.0.conv1.weight" not in keys:
        raise ConversionError("no ResNet backbone (backbone.conv1, backbone.layer1.*); keys: " + _sample(keys))
    if any(k.startswith(("backbone.stem.", "backbone.layer1.0.downsample.2")) for k in keys):
        raise ConversionError("backbone.stem / avg_down: a ResNetV1d (deep stem); Detectron2's ResNet has a plain stem")
    layout["backbone_norm"] = _norm_abbr(keys, "backbone.", "1")
    if layout["backbone_norm"] is None:
        raise ConversionError("backbone.conv1 is followed by no bn1/gn1: the backbone's norm is not BN, SyncBN or GN")
    if any(re.fullmatch(r"backbone\.layer\d\.\d+\.conv2\.conv_offset\..*", k) for k in keys):
        raise ConversionError("backbone.layer*.conv2.conv_offset: deformable convolutions (dcn) are not mirrored")
    bottleneck = "backbone.layer1.0.conv3.weight" in keys
    blocks = tuple(_count(keys, rf"backbone\.layer{i}\.\d+\.conv1\.weight") for i in range(1, 5))
    depths = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152} if bottleneck else \
        {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34}  # fmt: skip
    if blocks not in depths:
        raise ConversionError(
            f"unknown ResNet depth: {'bottleneck' if bottleneck else 'basic'} blocks per stage {list(blocks)} "
            "(backbone.layer1-4); Detectron2 builds ResNet-18/34 (basic) and 50/101/152 (bottleneck)"
        )
    last = "conv3" if bottleneck else "conv2"
    width = state["backbone.layer1.0.conv1.weight"].shape[0]
    groups = width // state["backbone.layer1.0.conv2.weight"].shape[1] if bottleneck else 1
    layout.update(block="bottleneck" if bottleneck else "basic", depth=depths[blocks], groups=groups,
                  width_per_group=width // groups if bottleneck else 64,
                  stem_channels=state["backbone.conv1.weight"].shape[0],
                  stage_channels=[state[f"backbone.layer{i}.0.{last}.weight"].shape[0] for i in range(1, 5)])  # fmt: skip
    # FPN and BFP.
    layout["bfp"] = any(k.startswith("neck.1.refine.") for k in keys)
    layout["refine"] = "none"
    if "neck.1.refine.g.conv.weight" in keys:
        layout["refine"] = "non_local"
    elif "neck.1.refine.conv.weight" in keys:
        layout["refine"] = "conv"
    neck = "neck.0." if layout["bfp"] or "neck.0.lateral_convs.0.conv.weight" in keys else "neck."
    layout["neck"] = neck
    if f"{neck}lateral_convs.0.conv.weight" not in keys:
        raise ConversionError(f"no FPN ({neck}lateral_convs.*); keys: " + _sample(keys))
    num_lateral = _count(keys, re.escape(neck) + r"lateral_convs\.\d+\.conv\.weight")
    lateral_in = [state[f"{neck}lateral_convs.{i}.conv.weight"].shape[1] for i in range(num_lateral)]
    stages = layout["stage_channels"]
    first = next((s for s in range(4) if stages[s : s + num_lateral] == lateral_in), None)
    if first is None:
        raise ConversionError(
            f"{neck}lateral_convs take {lateral_in} channels: no run of ResNet stages has them (C2-C5: {stages})"
        )
    num_fpn_convs = _count(keys, re.escape(neck) + r"fpn_convs\.\d+\.conv\.weight")
    layout.update(first_stage=first + 2, num_lateral=num_lateral,
                  fpn_channels=state[f"{neck}lateral_convs.0.conv.weight"].shape[0],
                  fpn_norm=_norm_abbr(keys, f"{neck}lateral_convs.0."),
                  extra="conv" if num_fpn_convs > num_lateral else "pool",
                  num_extra=max(num_fpn_convs - num_lateral, 1),
                  extra_in_channels=state[f"{neck}fpn_convs.{num_lateral}.conv.weight"].shape[1]
                  if num_fpn_convs > num_lateral else None)  # fmt: skip
    if layout["bfp"] and any(re.fullmatch(r"neck\.1\.refine\.\w+\.(bn|gn)\.weight", k) for k in keys):
        raise ConversionError("neck.1.refine.*.bn/gn: a BFP refinement with a norm (norm_cfg); ours has none")
    # Heads.
    if kind == "faster-rcnn":
        layout["rpn_feat"] = state["rpn_head.rpn_conv.weight"].shape[0]
        layout["rpn_anchors"] = state["rpn_head.rpn_reg.weight"].shape[0] // 4
        if state["rpn_head.rpn_cls.weight"].shape[0] != layout["rpn_anchors"]:
            raise ConversionError(
                "rpn_head.rpn_cls predicts 2 logits per anchor (loss_cls.use_sigmoid=False): Detectron2's RPN has one"
            )
        head = "roi_head.bbox_head."
        convs = _count(keys, re.escape(head) + r"shared_convs\.\d+\.conv\.weight")
        fcs = _count(keys, re.escape(head) + r"shared_fcs\.\d+\.weight")
        if fcs == 0:
            raise ConversionError(f"{head}shared_fcs: a box head without fc layers is not mirrored")
        conv_dim = state[f"{head}shared_convs.0.conv.weight"].shape[0] if convs else None
        channels = conv_dim or layout["fpn_channels"]
        fc_in = state[f"{head}shared_fcs.0.weight"].shape[1]
        resolution = math.isqrt(fc_in // channels)
        if resolution * resolution * channels != fc_in:
            raise ConversionError(f"{head}shared_fcs.0 takes {fc_in} inputs: not {channels} channels x R x R")
        num_reg = state[f"{head}fc_reg.weight"].shape[0]
        layout.update(roi_convs=convs, roi_conv_dim=conv_dim, roi_norm=_norm_abbr(keys, f"{head}shared_convs.0."),
                      roi_fcs=fcs, roi_fc_dim=state[f"{head}shared_fcs.{fcs - 1}.weight"].shape[0],
                      roi_resolution=resolution, num_classes=state[f"{head}fc_cls.weight"].shape[0] - 1,
                      class_agnostic=num_reg == 4)  # fmt: skip
        if num_reg not in (4, 4 * layout["num_classes"]):
            raise ConversionError(f"{head}fc_reg predicts {num_reg} deltas for {layout['num_classes']} classes")
    else:
        anchors = state["bbox_head.retina_reg.weight"].shape[0] // 4
        layout.update(retina_convs=_count(keys, r"bbox_head\.cls_convs\.\d+\.conv\.weight"),
                      retina_norm=_norm_abbr(keys, "bbox_head.cls_convs.0."), retina_anchors=anchors,
                      num_classes=state["bbox_head.retina_cls.weight"].shape[0] // anchors)  # fmt: skip
    return layout


def _sample(keys, n: int = 12) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


# --- renaming ------------------------------------------------------------------------------


def _rules(layout: dict) -> List[Tuple[str, object]]:
    """(regex over mmdetection's key, replacement string or function of the match)."""
    fpn = "backbone.fpn." if layout["bfp"] else "backbone."
    bottom_up = fpn + "bottom_up."
    neck = re.escape(layout["neck"])
    first, n_lat = layout["first_stage"], layout["num_lateral"]
    retina_step = 3 if layout.get("retina_norm") else 2  # conv, (norm,) ReLU per stacked conv

    def fpn_output(m):
        i = int(m.group(1))
        name = f"fpn_output{first + i}" if i < n_lat else {n_lat: "top_block.p6", n_lat + 1: "top_block.p7"}.get(i)
        return None if name is None else f"{fpn}{name}.{m.group(2)}"

    def res(m, what):
        return f"{bottom_up}res{int(m.group(1)) + 1}.{m.group(2)}.{what}"

    return [
        (r"backbone\.conv1\.weight", bottom_up + "stem.conv1.weight"),
        (rf"backbone\.{_NORM}1\.{_PARAM}", lambda m: f"{bottom_up}stem.conv1.norm.{m.group(2)}"),
        (r"backbone\.layer(\d)\.(\d+)\.conv(\d)\.weight", lambda m: res(m, f"conv{m.group(3)}.weight")),
        (rf"backbone\.layer(\d)\.(\d+)\.{_NORM}(\d)\.{_PARAM}",
         lambda m: res(m, f"conv{m.group(4)}.norm.{m.group(5)}")),
        (r"backbone\.layer(\d)\.(\d+)\.downsample\.0\.weight", lambda m: res(m, "shortcut.weight")),
        (rf"backbone\.layer(\d)\.(\d+)\.downsample\.1\.{_PARAM}", lambda m: res(m, f"shortcut.norm.{m.group(3)}")),
        (neck + r"lateral_convs\.(\d)\.conv\.(weight|bias)",
         lambda m: f"{fpn}fpn_lateral{first + int(m.group(1))}.{m.group(2)}"),
        (neck + rf"lateral_convs\.(\d)\.{_NORM}\.{_PARAM}",
         lambda m: f"{fpn}fpn_lateral{first + int(m.group(1))}.norm.{m.group(3)}"),
        (neck + r"fpn_convs\.(\d)\.conv\.(weight|bias)", fpn_output),
        (neck + rf"fpn_convs\.(\d)\.{_NORM}\.{_PARAM}",
         lambda m: fpn_output(re.match(r"(\d+)\.(.*)", f"{m.group(1)}.norm.{m.group(3)}"))),
        (r"neck\.1\.refine\.(g|theta|phi)\.conv\.(weight|bias)", r"backbone.refine.\1.\2"),
        (r"neck\.1\.refine\.conv_out\.conv\.(weight|bias)", r"backbone.refine.out.\1"),
        (r"neck\.1\.refine\.conv\.(weight|bias)", r"backbone.refine.conv.\1"),
        (r"rpn_head\.rpn_conv\.(weight|bias)", r"proposal_generator.rpn_head.conv.\1"),
        (r"rpn_head\.rpn_cls\.(weight|bias)", r"proposal_generator.rpn_head.objectness_logits.\1"),
        (r"rpn_head\.rpn_reg\.(weight|bias)", r"proposal_generator.rpn_head.anchor_deltas.\1"),
        (r"roi_head\.bbox_head\.shared_convs\.(\d)\.conv\.(weight|bias)",
         lambda m: f"roi_heads.box_head.conv{int(m.group(1)) + 1}.{m.group(2)}"),
        (rf"roi_head\.bbox_head\.shared_convs\.(\d)\.{_NORM}\.{_PARAM}",
         lambda m: f"roi_heads.box_head.conv{int(m.group(1)) + 1}.norm.{m.group(3)}"),
        (r"roi_head\.bbox_head\.shared_fcs\.(\d)\.(weight|bias)",
         lambda m: f"roi_heads.box_head.fc{int(m.group(1)) + 1}.{m.group(2)}"),
        (r"roi_head\.bbox_head\.fc_cls\.(weight|bias)", r"roi_heads.box_predictor.cls_score.\1"),
        (r"roi_head\.bbox_head\.fc_reg\.(weight|bias)", r"roi_heads.box_predictor.bbox_pred.\1"),
        (r"bbox_head\.(cls|reg)_convs\.(\d)\.conv\.(weight|bias)",
         lambda m: f"head.{'cls' if m.group(1) == 'cls' else 'bbox'}_subnet.{retina_step * int(m.group(2))}.{m.group(3)}"),
        (rf"bbox_head\.(cls|reg)_convs\.(\d)\.gn\.(weight|bias)",
         lambda m: f"head.{'cls' if m.group(1) == 'cls' else 'bbox'}_subnet.{3 * int(m.group(2)) + 1}.{m.group(3)}"),
        (r"bbox_head\.retina_cls\.(weight|bias)", r"head.cls_score.\1"),
        (r"bbox_head\.retina_reg\.(weight|bias)", r"head.bbox_pred.\1"),
    ]  # fmt: skip


def anchor_order(num_ratios: int, num_scales: int) -> torch.Tensor:
    """For Detectron2's anchor index ``d = scale * num_ratios + ratio``, mmdetection's index
    ``ratio * num_scales + scale`` of the same anchor: (num_ratios * num_scales,) int64."""
    scale, ratio = torch.meshgrid(torch.arange(num_scales), torch.arange(num_ratios), indexing="ij")
    return (ratio * num_scales + scale).flatten()


def _permute_anchors(t: torch.Tensor, num_ratios: int, num_scales: int) -> torch.Tensor:
    """Reorder the anchor-major output channels (dim 0) of an anchor head's layer."""
    order = anchor_order(num_ratios, num_scales)
    return t.reshape(num_ratios * num_scales, -1, *t.shape[1:])[order].reshape(t.shape)


_ANCHOR_LAYERS = ("bbox_head.retina_cls.", "bbox_head.retina_reg.", "rpn_head.rpn_cls.", "rpn_head.rpn_reg.")


def convert_state_dict(
    state: Dict[str, torch.Tensor], layout: Optional[dict] = None, num_ratios: int = 3, num_scales: Optional[int] = None
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Rename an mmdetection state dict to Detectron2's.

    Args:
        state: mmdetection's parameters and buffers.
        layout: :func:`weight_layout` of ``state`` (computed when None).
        num_ratios, num_scales: anchors per location of the RPN or RetinaNet head, ratios x
            scales: mmdetection orders them ratio-major, Detectron2 size-major, so the head's
            output channels are permuted (default: 3 ratios, the rest scales).

    Returns:
        (Detectron2 state dict, Detectron2 key -> mmdetection key). ``num_batches_tracked``
        buffers are renamed too; :func:`convert` drops those the model does not hold.

    Raises:
        ConversionError: naming the keys it could not place.
    """
    layout = layout or weight_layout(state)
    anchors = layout.get("retina_anchors") or layout.get("rpn_anchors")
    num_scales = num_scales or anchors // num_ratios
    if num_ratios * num_scales != anchors:
        raise ConversionError(f"{anchors} anchors per location are not {num_ratios} ratios x {num_scales} scales")
    rules = [(re.compile(p), r) for p, r in _rules(layout)]
    out, source, unplaced = {}, {}, []
    for key, value in state.items():
        for pattern, repl in rules:
            m = pattern.fullmatch(key)
            if m:
                new = repl(m) if callable(repl) else m.expand(repl)
                break
        else:
            new = None
        if new is None:
            unplaced.append(key)
            continue
        if key.startswith(_ANCHOR_LAYERS) and num_scales > 1:
            value = _permute_anchors(value, num_ratios, num_scales)
        out[new] = value.detach().clone().contiguous()
        source[new] = key
    if unplaced:
        raise ConversionError(f"{len(unplaced)} keys could not be placed: {_sample(unplaced, 20)}")
    return out, source


# --- the whole conversion -------------------------------------------------------------------


def config_text(meta: dict) -> Tuple[Optional[str], Optional[str]]:
    """(config text, where) from a checkpoint's meta: mmengine's ``meta["cfg"]`` (mmdetection
    3.x) or mmcv's ``meta["config"]`` (2.x); (None, None) when it has neither."""
    for key in ("cfg", "config"):
        if isinstance(meta.get(key), str) and meta[key].strip():
            return meta[key], f'meta["{key}"]'
    return None, None


def detectron2_cfg(plan: ConfigPlan, weights: str = ""):
    """Detectron2's config (with ``MODEL.LIBRA``) holding ``plan``'s settings."""
    from detectron2.config import get_cfg

    from .config import add_libra_config

    cfg = get_cfg()
    add_libra_config(cfg)
    pairs = []
    for key, value, _ in plan.settings:
        pairs += [key, value]
    cfg.merge_from_list(pairs)
    cfg.MODEL.WEIGHTS = weights
    return cfg


def _expected_state(cfg) -> Dict[str, torch.Size]:
    """Key -> shape of the Detectron2 model that ``cfg`` builds (on the meta device: no memory)."""
    from detectron2.modeling import build_model

    meta_cfg = cfg.clone()
    meta_cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(meta_cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def convert(state: Dict[str, torch.Tensor], meta: dict):
    """Convert an mmdetection checkpoint's weights and config.

    Returns:
        (Detectron2 state dict, :class:`~libra_rcnn.mmdet_config.ConfigPlan`, layout, where the
        config came from or None). The state dict has exactly the keys and shapes of the model
        that the plan's config builds: conv biases that mmdetection leaves out before a norm
        (Detectron2's RetinaNet head has them) are zeros, and ``num_batches_tracked`` buffers
        that the model does not hold are dropped.

    Raises:
        ConversionError: for a layout, setting or key that Detectron2 cannot mirror, naming it.
    """
    layout = weight_layout(state)
    text, where = config_text(meta)
    variables = read_config_text(text) if text else None
    plan = detectron2_settings(layout, variables, meta)
    model, source = convert_state_dict(state, layout, plan.num_ratios, plan.num_scales)
    try:
        expected = _expected_state(detectron2_cfg(plan))
    except (ValueError, KeyError, AssertionError) as e:
        raise ConversionError(f"the written config would not build: {e}") from e
    for key in [k for k in model if k not in expected]:
        if key.endswith("num_batches_tracked"):
            del model[key]
        else:
            raise ConversionError(f"{source[key]}: Detectron2's model has no {key}")
    for key, shape in expected.items():
        if key in model:
            if model[key].shape != shape:
                raise ConversionError(
                    f"{source[key]}: shape {tuple(model[key].shape)} but Detectron2's {key} has {tuple(shape)}"
                )
            continue
        weight = key[: -len("bias")] + "weight"
        if key.endswith(".bias") and weight in model:  # a conv before a norm: mmdetection has no bias
            model[key] = torch.zeros(shape, dtype=model[weight].dtype)
        elif key.endswith("num_batches_tracked"):
            model[key] = torch.zeros((), dtype=torch.long)
        else:
            raise ConversionError(f"nothing in the checkpoint for Detectron2's {key}")
    return model, plan, layout, where


def _version(meta: dict) -> Optional[str]:
    """"mmdet X" (2.x meta) or "mmengine X" (mmengine appends a git hash to its version)."""
    for key, name in (("mmdet_version", "mmdet"), ("mmengine_version", "mmengine")):
        value = str(meta.get(key, ""))
        m = re.match(r"(\d+\.\d+\.\d+?)[0-9a-f]{7,}$", value) or re.match(r"(\d+(\.\d+)*)", value)
        if m:
            return f"{name} {m.group(1)}"
    return None


def main(argv: Optional[List[str]] = None) -> int:
    """The command line: convert ``INPUT OUTPUT``; returns 0, or 1 with the error on stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m libra_rcnn.convert_mmdet",
        description="Convert an mmdetection 2.x/3.x (Libra) Faster R-CNN or (Libra) RetinaNet checkpoint to "
        "Detectron2: OUTPUT.pth and its config OUTPUT.yaml.",
    )
    parser.add_argument("input", help="mmdetection checkpoint (.pth)")
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pth); the config goes beside it (.yaml)")
    args = parser.parse_args(argv)
    config_file = os.path.splitext(args.output)[0] + ".yaml"
    try:
        state, meta = load_mmdet_checkpoint(args.input)
        model, plan, layout, where = convert(state, meta)
    except (ConversionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    version = _version(meta)
    header = [
        f"Written by python -m libra_rcnn.convert_mmdet from {args.input}",
        f"(mmdetection {'config in ' + where if where else 'checkpoint without a config'}; {version or 'version unknown'}).",
        "Each value names the mmdetection key it mirrors.",
    ]
    tmp = f"{args.output}.tmp"
    torch.save({"model": model, "__author__": "mmdetection (libra_rcnn.convert_mmdet)", "matching_heuristics": False},
               tmp)  # fmt: skip
    write_config(config_file, dataclasses.replace(plan, settings=[("MODEL.WEIGHTS", args.output, "the converted weights")]
                                                  + plan.settings), header)  # fmt: skip
    os.replace(tmp, args.output)
    print(f"converted {len(state)} mmdetection tensors ({version or 'version unknown'}) into {len(model)} "
          f"Detectron2 tensors: {args.output}")  # fmt: skip
    print(f"config: {config_file} (" + (f"from the checkpoint's {where}" if where else "no config in the checkpoint")
          + (f"; {len(plan.assumptions)} values assumed, listed in it" if plan.assumptions else "") + ")")  # fmt: skip
    for line in plan.assumptions:
        print(f"  assumed: {line}")
    print("evaluate with:")
    print(f"  python train_net.py --config-file {config_file} --eval-only DATASETS.TEST \"('your_dataset_val',)\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
