"""Convert mmdetection 2.x/3.x checkpoints of (Libra) Faster R-CNN and (Libra) RetinaNet.

Usage::

    python -m libra_rcnn.convert_mmdet INPUT.pth OUTPUT.pth

reads an mmdetection checkpoint (a ``state_dict`` with or without ``meta``, or a bare state
dict), renames every parameter to the Detectron2 model of the matching config in
``configs/COCO-Detection/mmdet/``, and writes a Detectron2 checkpoint
(``{"model": ..., "__author__": ..., "matching_heuristics": False}``) that
``DetectionCheckpointer`` loads with no missing or unexpected keys. It prints the config to
run it with. See docs/pretrained_mmdet.md for the published checkpoints and the parity with
mmdetection's own code (tests/test_mmdet_parity.py).

Supported layouts: ResNet / ResNeXt (``backbone.layer*``), FPN (``neck`` or ``neck.0``), BFP
(``neck.1.refine``, non-local or conv), RPN + 2-fc box head (``rpn_head``,
``roi_head.bbox_head``) or RetinaNet's head (``bbox_head``). Two conventions change on the way:

- ResNet batch norms become Detectron2's ``FrozenBatchNorm2d`` (``num_batches_tracked`` is
  dropped);
- mmdetection orders a location's RetinaNet anchors ratio-major (ratio, then scale),
  Detectron2's ``DefaultAnchorGenerator`` size-major: the RetinaNet head's output channels are
  permuted so that Detectron2's own anchors line up with them.

mmdetection 1.x checkpoints (the 2019 model zoo: boxes with the +1 pixel convention, the box
head at the top level) are refused with a message saying so.
"""
import argparse
import pickle
import re
import sys
import types
from typing import Dict, List, Optional, Tuple

import torch

__all__ = ["ConversionError", "load_mmdet_checkpoint", "convert_state_dict", "anchor_order", "suggest_config", "main"]

CONFIG_DIR = "configs/COCO-Detection/mmdet"
_BN = r"(weight|bias|running_mean|running_var)"


class ConversionError(ValueError):
    """An input this converter cannot convert, with the reason (file, keys, version)."""


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


# --- renaming ------------------------------------------------------------------------------


def _layout(state: Dict[str, torch.Tensor]) -> dict:
    """What the state dict holds: detector kind, BFP, FPN levels, ResNet depth and groups."""
    keys = set(state)
    if "bbox_head.fc_cls.weight" in keys or any(k.startswith("bbox_head.shared_fcs.") for k in keys):
        raise ConversionError(_v1_message("the checkpoint", "its box head is 'bbox_head', not 'roi_head.bbox_head'"))
    if "rpn_head.rpn_cls.weight" in keys and "roi_head.bbox_head.fc_cls.weight" in keys:
        kind = "faster-rcnn"
        num_classes = state["roi_head.bbox_head.fc_cls.weight"].shape[0] - 1
        num_anchors = None
    elif "bbox_head.retina_cls.weight" in keys:
        kind = "retinanet"
        num_anchors = state["bbox_head.retina_reg.weight"].shape[0] // 4
        num_classes = state["bbox_head.retina_cls.weight"].shape[0] // num_anchors
    else:
        raise ConversionError(
            "not a Faster R-CNN (rpn_head.rpn_cls + roi_head.bbox_head.fc_cls) nor a RetinaNet "
            "(bbox_head.retina_cls) checkpoint; keys it could not place: " + _sample(keys)
        )
    bfp = any(k.startswith("neck.1.refine.") for k in keys)
    refine = "none"
    if "neck.1.refine.g.conv.weight" in keys:
        refine = "non_local"
    elif "neck.1.refine.conv.weight" in keys:
        refine = "conv"
    neck = "neck.0." if bfp or "neck.0.lateral_convs.0.conv.weight" in keys else "neck."
    lateral_in = state.get(neck + "lateral_convs.0.conv.weight")
    if lateral_in is None or "backbone.layer1.0.conv1.weight" not in keys:
        raise ConversionError(
            f"no ResNet backbone (backbone.layer1.*) or no FPN ({neck}lateral_convs.*); keys: " + _sample(keys)
        )
    res_channels = {state[f"backbone.layer{i}.0.conv3.weight"].shape[0]: i + 1 for i in range(1, 5)
                    if f"backbone.layer{i}.0.conv3.weight" in keys}  # fmt: skip
    first_level = res_channels.get(lateral_in.shape[1])
    if first_level is None:
        raise ConversionError(f"{neck}lateral_convs.0 takes {lateral_in.shape[1]} channels: no ResNet stage has them")
    num_lateral = sum(1 for k in keys if re.fullmatch(re.escape(neck) + r"lateral_convs\.\d+\.conv\.weight", k))
    blocks = [sum(1 for k in keys if re.fullmatch(rf"backbone\.layer{i}\.\d+\.conv1\.weight", k)) for i in range(1, 5)]
    depth = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}.get(tuple(blocks))
    if depth is None:
        raise ConversionError(f"unknown ResNet depth: blocks per stage {blocks} (backbone.layer1-4)")
    width = state["backbone.layer1.0.conv1.weight"].shape[0]
    groups = width // state["backbone.layer1.0.conv2.weight"].shape[1]
    return dict(kind=kind, bfp=bfp, refine=refine, neck=neck, first_level=first_level, num_lateral=num_lateral,
                depth=depth, groups=groups, width_per_group=width // groups, num_classes=num_classes,
                num_anchors=num_anchors)  # fmt: skip


def _sample(keys, n: int = 12) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _rules(layout: dict) -> List[Tuple[str, object]]:
    """(regex over mmdetection's key, replacement string or function of the match)."""
    fpn = "backbone.fpn." if layout["bfp"] else "backbone."
    bottom_up = fpn + "bottom_up."
    neck = re.escape(layout["neck"])
    first, n_lat = layout["first_level"], layout["num_lateral"]

    def fpn_output(m):
        i = int(m.group(1))
        name = f"fpn_output{first + i}" if i < n_lat else {n_lat: "top_block.p6", n_lat + 1: "top_block.p7"}.get(i)
        return None if name is None else f"{fpn}{name}.{m.group(2)}"

    def res(m, what):
        return f"{bottom_up}res{int(m.group(1)) + 1}.{m.group(2)}.{what}"

    return [
        (r"backbone\.conv1\.weight", bottom_up + "stem.conv1.weight"),
        (rf"backbone\.bn1\.{_BN}", lambda m: f"{bottom_up}stem.conv1.norm.{m.group(1)}"),
        (r"backbone\.layer(\d)\.(\d+)\.conv(\d)\.weight", lambda m: res(m, f"conv{m.group(3)}.weight")),
        (rf"backbone\.layer(\d)\.(\d+)\.bn(\d)\.{_BN}", lambda m: res(m, f"conv{m.group(3)}.norm.{m.group(4)}")),
        (r"backbone\.layer(\d)\.(\d+)\.downsample\.0\.weight", lambda m: res(m, "shortcut.weight")),
        (rf"backbone\.layer(\d)\.(\d+)\.downsample\.1\.{_BN}", lambda m: res(m, f"shortcut.norm.{m.group(3)}")),
        (neck + r"lateral_convs\.(\d)\.conv\.(weight|bias)",
         lambda m: f"{fpn}fpn_lateral{first + int(m.group(1))}.{m.group(2)}"),
        (neck + r"fpn_convs\.(\d)\.conv\.(weight|bias)", fpn_output),
        (r"neck\.1\.refine\.(g|theta|phi)\.conv\.(weight|bias)", r"backbone.refine.\1.\2"),
        (r"neck\.1\.refine\.conv_out\.conv\.(weight|bias)", r"backbone.refine.out.\1"),
        (r"neck\.1\.refine\.conv\.(weight|bias)", r"backbone.refine.conv.\1"),
        (r"rpn_head\.rpn_conv\.(weight|bias)", r"proposal_generator.rpn_head.conv.\1"),
        (r"rpn_head\.rpn_cls\.(weight|bias)", r"proposal_generator.rpn_head.objectness_logits.\1"),
        (r"rpn_head\.rpn_reg\.(weight|bias)", r"proposal_generator.rpn_head.anchor_deltas.\1"),
        (r"roi_head\.bbox_head\.shared_fcs\.(\d)\.(weight|bias)",
         lambda m: f"roi_heads.box_head.fc{int(m.group(1)) + 1}.{m.group(2)}"),
        (r"roi_head\.bbox_head\.fc_cls\.(weight|bias)", r"roi_heads.box_predictor.cls_score.\1"),
        (r"roi_head\.bbox_head\.fc_reg\.(weight|bias)", r"roi_heads.box_predictor.bbox_pred.\1"),
        (r"bbox_head\.cls_convs\.(\d)\.conv\.(weight|bias)",
         lambda m: f"head.cls_subnet.{2 * int(m.group(1))}.{m.group(2)}"),
        (r"bbox_head\.reg_convs\.(\d)\.conv\.(weight|bias)",
         lambda m: f"head.bbox_subnet.{2 * int(m.group(1))}.{m.group(2)}"),
        (r"bbox_head\.retina_cls\.(weight|bias)", r"head.cls_score.\1"),
        (r"bbox_head\.retina_reg\.(weight|bias)", r"head.bbox_pred.\1"),
    ]  # fmt: skip


def anchor_order(num_ratios: int, num_scales: int) -> torch.Tensor:
    """For Detectron2's anchor index ``d = scale * num_ratios + ratio``, mmdetection's index
    ``ratio * num_scales + scale`` of the same anchor: (num_ratios * num_scales,) int64."""
    scale, ratio = torch.meshgrid(torch.arange(num_scales), torch.arange(num_ratios), indexing="ij")
    return (ratio * num_scales + scale).flatten()


def _permute_anchors(t: torch.Tensor, num_anchors: int, num_ratios: int = 3) -> torch.Tensor:
    """Reorder the anchor-major output channels (dim 0) of a RetinaNet head layer."""
    order = anchor_order(num_ratios, num_anchors // num_ratios)
    return t.reshape(num_anchors, -1, *t.shape[1:])[order].reshape(t.shape)


def convert_state_dict(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Rename an mmdetection state dict to Detectron2's.

    Returns:
        (Detectron2 state dict, layout): the layout says what was found (``kind``:
        ``"faster-rcnn"`` / ``"retinanet"``, ``bfp``, ``refine``, ``depth``, ``groups``,
        ``width_per_group``, ``num_classes``, ...).

    Raises:
        ConversionError: naming the keys it could not place, for an unknown layout, a
            RetinaNet head whose anchors are not 3 ratios x 3 scales, or an mmdetection 1.x
            layout.
    """
    layout = _layout(state)
    if layout["kind"] == "retinanet" and layout["num_anchors"] != 9:
        raise ConversionError(
            f"bbox_head.retina_reg predicts {layout['num_anchors']} anchors per location; the configs use "
            "3 ratios x 3 scales (9)"
        )
    rules = [(re.compile(p), r) for p, r in _rules(layout)]
    out, unplaced = {}, []
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
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
        if key.startswith(("bbox_head.retina_cls.", "bbox_head.retina_reg.")):
            value = _permute_anchors(value, layout["num_anchors"])
        out[new] = value.detach().clone().contiguous()
    if unplaced:
        raise ConversionError(f"{len(unplaced)} keys could not be placed: {_sample(unplaced, 20)}")
    return out, layout


def suggest_config(layout: dict) -> Tuple[str, List[str]]:
    """(config file, KEY VALUE overrides) that build the Detectron2 model of ``layout``."""
    name = ("libra-" if layout["bfp"] else "") + layout["kind"]
    backbone = {(50, 1): "r50", (101, 1): "r101", (101, 64): "x101-64x4d"}.get((layout["depth"], layout["groups"]))
    overrides = []
    if backbone is None or (backbone != "r50" and name != "libra-faster-rcnn"):
        overrides += ["MODEL.RESNETS.DEPTH", str(layout["depth"]), "MODEL.RESNETS.NUM_GROUPS", str(layout["groups"]),
                      "MODEL.RESNETS.WIDTH_PER_GROUP", str(layout["width_per_group"])]  # fmt: skip
        backbone = "r50"
    if layout["bfp"] and layout["refine"] != "non_local":
        overrides += ["MODEL.LIBRA.BFP.REFINE_TYPE", layout["refine"]]
    if layout["num_classes"] != 80:
        key = "MODEL.ROI_HEADS.NUM_CLASSES" if layout["kind"] == "faster-rcnn" else "MODEL.RETINANET.NUM_CLASSES"
        overrides += [key, str(layout["num_classes"])]
    return f"{CONFIG_DIR}/{name}_{backbone}_fpn_1x_coco.yaml", overrides


def main(argv: Optional[List[str]] = None) -> int:
    """The command line: convert ``INPUT OUTPUT``; returns 0, or 1 with the error on stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m libra_rcnn.convert_mmdet",
        description="Convert an mmdetection 2.x/3.x (Libra) Faster R-CNN or RetinaNet checkpoint to Detectron2.",
    )
    parser.add_argument("input", help="mmdetection checkpoint (.pth)")
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pth)")
    args = parser.parse_args(argv)
    try:
        state, meta = load_mmdet_checkpoint(args.input)
        model, layout = convert_state_dict(state)
    except (ConversionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    torch.save({"model": model, "__author__": "mmdetection (libra_rcnn.convert_mmdet)", "matching_heuristics": False},
               args.output)  # fmt: skip
    config, overrides = suggest_config(layout)
    version = meta.get("mmdet_version", "unknown")
    print(f"converted {len(state)} mmdetection tensors (mmdet {version}) into {len(model)} Detectron2 tensors: "
          f"{args.output}")  # fmt: skip
    print(f"config: {config}")
    print("evaluate with:")
    command = f"python train_net.py --config-file {config} --eval-only MODEL.WEIGHTS {args.output}"
    print("  " + " ".join([command, *overrides]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
