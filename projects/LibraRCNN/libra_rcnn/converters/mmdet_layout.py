"""What an mmdetection state dict holds, read from its keys and shapes alone: :func:`weight_layout`."""
import math
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from .errors import ConversionError
from .mmdet_checkpoint import v1_message

__all__ = ["WeightLayout", "ResNetLayout", "FPNLayout", "RCNNLayout", "RetinaLayout", "weight_layout", "sample_keys"]


@dataclass(frozen=True)
class ResNetLayout:
    """The backbone: a ResNet(Xt) of ``"basic"`` or ``"bottleneck"`` blocks.

    Attributes:
        block, depth: the block type and the ResNet's depth (18, 34, 50, 101, 152).
        groups, width_per_group: ResNeXt's cardinality and width (1 and 64 for a ResNet).
        stem_channels: the stem's output channels.
        stage_channels: C2-C5's output channels.
        norm: ``"bn"`` or ``"gn"``, the layer abbreviation in the weights' keys.
    """

    block: str
    depth: int
    groups: int
    width_per_group: int
    stem_channels: int
    stage_channels: List[int]
    norm: str


@dataclass(frozen=True)
class FPNLayout:
    """The FPN (the neck, or the first of a BFP's two necks).

    Attributes:
        prefix: its keys' prefix, ``"neck."`` or ``"neck.0."``.
        first_stage: the ResNet stage of its first lateral (2 for C2).
        num_lateral: its lateral convs, one per ResNet stage read.
        channels: its width.
        norm: ``"bn"`` / ``"gn"`` in its convs, or None.
        extra: how its extra levels are made, ``"pool"`` (P6 by max pooling) or ``"conv"``.
        num_extra: its extra levels.
        extra_in_channels: the input channels of the first extra conv (None with ``"pool"``).
    """

    prefix: str
    first_stage: int
    num_lateral: int
    channels: int
    norm: Optional[str]
    extra: str
    num_extra: int
    extra_in_channels: Optional[int]


@dataclass(frozen=True)
class RCNNLayout:
    """The RPN and the RoI box head of a (Libra) Faster R-CNN.

    Attributes:
        rpn_channels, rpn_anchors: the RPN conv's width and anchors per location.
        box_convs, box_conv_dim, box_norm: the box head's shared convs, their width (None
            without) and norm (``"bn"`` / ``"gn"`` / None).
        box_fcs, box_fc_dim, box_resolution: its fc layers, the last one's width and the RoI
            side that the first one reads.
        class_agnostic: one box per RoI instead of one per class.
    """

    rpn_channels: int
    rpn_anchors: int
    box_convs: int
    box_conv_dim: Optional[int]
    box_norm: Optional[str]
    box_fcs: int
    box_fc_dim: int
    box_resolution: int
    class_agnostic: bool


@dataclass(frozen=True)
class RetinaLayout:
    """The head of a (Libra) RetinaNet: its stacked convs, their norm (``"bn"`` / ``"gn"`` /
    None), and anchors per location."""

    convs: int
    norm: Optional[str]
    anchors: int


@dataclass(frozen=True)
class WeightLayout:
    """What an mmdetection (Libra) Faster R-CNN or (Libra) RetinaNet state dict holds.

    Attributes:
        kind: ``"faster-rcnn"`` or ``"retinanet"``.
        bfp, refine: a balanced feature pyramid (``neck.1``) and its refinement
            (``"non_local"``, ``"conv"``, ``"none"``).
        num_classes: foreground classes.
        backbone, fpn: :class:`ResNetLayout`, :class:`FPNLayout`.
        rcnn, retina: :class:`RCNNLayout` of a Faster R-CNN, :class:`RetinaLayout` of a
            RetinaNet (the other one None).
    """

    kind: str
    bfp: bool
    refine: str
    num_classes: int
    backbone: ResNetLayout
    fpn: FPNLayout
    rcnn: Optional[RCNNLayout] = None
    retina: Optional[RetinaLayout] = None

    @property
    def anchors(self) -> int:
        """Anchors per location of the anchor head (the RPN's or RetinaNet's)."""
        return self.rcnn.rpn_anchors if self.rcnn else self.retina.anchors


def _norm_abbr(keys, prefix: str, suffix: str = "") -> Optional[str]:
    """``"bn"`` / ``"gn"`` when ``prefix + abbreviation + suffix`` holds a norm layer, else None."""
    for abbr in ("bn", "gn"):
        if f"{prefix}{abbr}{suffix}.weight" in keys:
            return abbr
    return None


def _count(keys, pattern: str) -> int:
    return sum(1 for k in keys if re.fullmatch(pattern, k))


def weight_layout(state: Dict[str, torch.Tensor]) -> WeightLayout:
    """What an mmdetection state dict holds, read from its keys and shapes alone.

    Returns:
        the :class:`WeightLayout`.

    Raises:
        ConversionError: for a layout that is not a ResNet-FPN (Libra) Faster R-CNN or
            RetinaNet, naming the key.
    """
    keys = set(state)
    if "bbox_head.fc_cls.weight" in keys or any(k.startswith("bbox_head.shared_fcs.") for k in keys):
        raise ConversionError(v1_message("the checkpoint", "its box head is 'bbox_head', not 'roi_head.bbox_head'"))
    if "rpn_head.rpn_cls.weight" in keys and "roi_head.bbox_head.fc_cls.weight" in keys:
        kind = "faster-rcnn"
    elif "bbox_head.retina_cls.weight" in keys:
        kind = "retinanet"
    else:
        raise ConversionError(
            "not a Faster R-CNN (rpn_head.rpn_cls + roi_head.bbox_head.fc_cls) nor a RetinaNet "
            "(bbox_head.retina_cls) checkpoint; keys it could not place: " + sample_keys(keys)
        )
    layout: dict = dict(kind=kind)
    # Backbone.
    if "backbone.conv1.weight" not in keys or "backbone.layer1.0.conv1.weight" not in keys:
        raise ConversionError("no ResNet backbone (backbone.conv1, backbone.layer1.*); keys: " + sample_keys(keys))
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
        raise ConversionError(f"no FPN ({neck}lateral_convs.*); keys: " + sample_keys(keys))
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
    backbone = ResNetLayout(**{k: layout[k] for k in ("block", "depth", "groups", "width_per_group", "stem_channels",
                                                      "stage_channels")}, norm=layout["backbone_norm"])  # fmt: skip
    fpn = FPNLayout(prefix=layout["neck"], first_stage=layout["first_stage"], num_lateral=layout["num_lateral"],
                    channels=layout["fpn_channels"], norm=layout["fpn_norm"], extra=layout["extra"],
                    num_extra=layout["num_extra"], extra_in_channels=layout["extra_in_channels"])  # fmt: skip
    rcnn = retina = None
    if kind == "faster-rcnn":
        rcnn = RCNNLayout(rpn_channels=layout["rpn_feat"], rpn_anchors=layout["rpn_anchors"],
                          box_convs=layout["roi_convs"], box_conv_dim=layout["roi_conv_dim"], box_norm=layout["roi_norm"],
                          box_fcs=layout["roi_fcs"], box_fc_dim=layout["roi_fc_dim"],
                          box_resolution=layout["roi_resolution"], class_agnostic=layout["class_agnostic"])  # fmt: skip
    else:
        retina = RetinaLayout(convs=layout["retina_convs"], norm=layout["retina_norm"], anchors=layout["retina_anchors"])
    return WeightLayout(kind=kind, bfp=layout["bfp"], refine=layout["refine"], num_classes=layout["num_classes"],
                        backbone=backbone, fpn=fpn, rcnn=rcnn, retina=retina)  # fmt: skip


def sample_keys(keys, n: int = 12) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")
