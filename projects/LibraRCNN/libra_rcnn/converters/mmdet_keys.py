"""Renaming an mmdetection state dict to Detectron2's: :func:`convert_state_dict`.

mmdetection orders a location's anchors ratio-major (ratio, then scale), Detectron2's
``DefaultAnchorGenerator`` size-major: the anchor heads' output channels are permuted
(:func:`anchor_order`) so that Detectron2's own anchors line up with them.
"""
import re
from typing import Dict, List, Optional, Tuple

import torch

from .errors import ConversionError
from .mmdet_layout import WeightLayout, sample_keys, weight_layout

__all__ = ["convert_state_dict", "anchor_order"]


_NORM = r"(bn|gn)"


_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
# mmdetection's RPN layers and Detectron2's.
_RPN = {"conv": "conv", "cls": "objectness_logits", "reg": "anchor_deltas"}


def _rules(layout: WeightLayout) -> List[Tuple[str, object]]:
    """(regex over mmdetection's key, replacement string or function of the match)."""
    fpn = "backbone.fpn." if layout.bfp else "backbone."
    bottom_up = fpn + "bottom_up."
    neck = re.escape(layout.fpn.prefix)
    first, n_lat = layout.fpn.first_stage, layout.fpn.num_lateral
    retina_step = 3 if layout.retina and layout.retina.norm else 2  # conv, (norm,) ReLU per stacked conv

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
        (r"rpn_head\.rpn_(conv|cls|reg)\.(weight|bias)", lambda m: f"proposal_generator.rpn_head.{_RPN[m.group(1)]}.{m.group(2)}"),
        # The box head's shared convs and fcs count from 0 in mmdetection, from 1 in Detectron2.
        (rf"roi_head\.bbox_head\.shared_(conv|fc)s\.(\d)\.(conv\.|{_NORM}\.)?{_PARAM}",
         lambda m: f"roi_heads.box_head.{m.group(1)}{int(m.group(2)) + 1}.{'norm.' if m.group(4) else ''}{m.group(5)}"),
        (r"roi_head\.bbox_head\.fc_(cls|reg)\.(weight|bias)",
         lambda m: f"roi_heads.box_predictor.{'cls_score' if m.group(1) == 'cls' else 'bbox_pred'}.{m.group(2)}"),
        # RetinaNet's towers: conv, (norm,) ReLU per stacked conv in Detectron2's subnets.
        (r"bbox_head\.(cls|reg)_convs\.(\d)\.(conv|gn)\.(weight|bias)",
         lambda m: f"head.{'cls' if m.group(1) == 'cls' else 'bbox'}_subnet."
                   f"{retina_step * int(m.group(2)) + (m.group(3) == 'gn')}.{m.group(4)}"),
        (r"bbox_head\.retina_(cls|reg)\.(weight|bias)",
         lambda m: f"head.{'cls_score' if m.group(1) == 'cls' else 'bbox_pred'}.{m.group(2)}"),
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
    state: Dict[str, torch.Tensor], layout: Optional[WeightLayout] = None, num_ratios: int = 3, num_scales: Optional[int] = None
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
    anchors = layout.anchors
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
        raise ConversionError(f"{len(unplaced)} keys could not be placed: {sample_keys(unplaced, 20)}")
    return out, source
