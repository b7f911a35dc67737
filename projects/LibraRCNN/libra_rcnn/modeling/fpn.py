"""RetinaNet's FPN with mmdetection's P6 and P7: no ReLU before P7, the FPN's norm on both.

Detectron2's ``LastLevelP6P7`` applies a ReLU to P6 before the stride-2 convolution that makes
P7, and no norm to either; mmdetection's RetinaNet FPN (``add_extra_convs="on_input"``,
``relu_before_extra_convs=False``) applies no ReLU, and its ``norm_cfg`` to every FPN conv, the
two extra ones included. Weights trained one way give features 70 % apart (relative) when run
the other way, so models converted from mmdetection (``python -m libra_rcnn.convert_mmdet``)
select ``build_retinanet_resnet_fpn_p7_no_relu_backbone`` (or name it in
``MODEL.LIBRA.BFP.FPN_BACKBONE`` under the balanced feature pyramid).
"""
from typing import List

import torch
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, build_resnet_backbone
from fvcore.nn import weight_init
from torch import nn

__all__ = ["LastLevelP6P7NoReLU", "build_retinanet_resnet_fpn_p7_no_relu_backbone"]


class LastLevelP6P7NoReLU(nn.Module):
    """P6 = conv3x3/2(C5), P7 = conv3x3/2(P6), each followed by ``norm``; no ReLU in between.

    Submodules ``p6`` and ``p7`` (``detectron2.layers.Conv2d``, bias only without a norm), with
    the initialisation of Detectron2's ``LastLevelP6P7`` (``c2_xavier_fill``).

    Args:
        in_channels: channels of the input feature (C5: 2048 for ResNet-50).
        out_channels: FPN channels.
        in_feature: the bottom-up feature P6 is computed from (``"res5"``).
        norm: ``MODEL.FPN.NORM`` (``""``, ``"BN"``, ``"SyncBN"``, ``"GN"``, ...).

    Shapes: input (B, in_channels, H, W); outputs [(B, out, ceil(H/2), ceil(W/2)),
    (B, out, ceil(H/4), ceil(W/4))].
    """

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5", norm: str = ""):
        super().__init__()
        self.num_levels = 2
        self.in_feature = in_feature
        for name, channels in (("p6", in_channels), ("p7", out_channels)):
            conv = Conv2d(channels, out_channels, 3, 2, 1, bias=not norm, norm=get_norm(norm, out_channels))
            weight_init.c2_xavier_fill(conv)
            setattr(self, name, conv)

    def forward(self, c5: torch.Tensor) -> List[torch.Tensor]:
        p6 = self.p6(c5)
        return [p6, self.p7(p6)]


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_fpn_p7_no_relu_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """Detectron2's ``build_retinanet_resnet_fpn_backbone`` with :class:`LastLevelP6P7NoReLU`.

    Reads the same keys (``MODEL.RESNETS.*``, ``MODEL.FPN.*``); P3–P7 from C3–C5, with
    ``MODEL.FPN.NORM`` on P6 and P7 too.
    """
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7NoReLU(bottom_up.output_shape()["res5"].channels, out_channels, "res5",
                                      cfg.MODEL.FPN.NORM),  # fmt: skip
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
