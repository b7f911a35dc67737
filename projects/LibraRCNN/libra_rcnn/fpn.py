"""RetinaNet's FPN with P7 computed from P6 directly, as mmdetection computes it.

Detectron2's ``LastLevelP6P7`` applies a ReLU to P6 before the stride-2 convolution that makes
P7; mmdetection's RetinaNet FPN (``add_extra_convs="on_input"``, ``relu_before_extra_convs=False``)
does not. Weights trained one way give features 70 % apart (relative) when run the other way,
so models converted from mmdetection (``python -m libra_rcnn.convert_mmdet``) select
``build_retinanet_resnet_fpn_p7_no_relu_backbone`` (or name it in
``MODEL.LIBRA.BFP.FPN_BACKBONE`` under the balanced feature pyramid).
"""
from typing import List

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7

__all__ = ["LastLevelP6P7NoReLU", "build_retinanet_resnet_fpn_p7_no_relu_backbone"]


class LastLevelP6P7NoReLU(LastLevelP6P7):
    """P6 = conv3x3/2(C5), P7 = conv3x3/2(P6): Detectron2's P6/P7 block without the ReLU.

    Same submodules (``p6``, ``p7``) and initialisation as ``LastLevelP6P7``.

    Args:
        in_channels: channels of the input feature (C5: 2048 for ResNet-50).
        out_channels: FPN channels.
        in_feature: the bottom-up feature P6 is computed from (``"res5"``).

    Shapes: input (B, in_channels, H, W); outputs [(B, out, ceil(H/2), ceil(W/2)),
    (B, out, ceil(H/4), ceil(W/4))].
    """

    def forward(self, c5: torch.Tensor) -> List[torch.Tensor]:
        p6 = self.p6(c5)
        return [p6, self.p7(p6)]


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_fpn_p7_no_relu_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """Detectron2's ``build_retinanet_resnet_fpn_backbone`` with :class:`LastLevelP6P7NoReLU`.

    Reads the same keys (``MODEL.RESNETS.*``, ``MODEL.FPN.*``); P3–P7 from C3–C5.
    """
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7NoReLU(bottom_up.output_shape()["res5"].channels, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
