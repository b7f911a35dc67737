"""Balanced feature pyramid (Libra R-CNN §3.2, Eq. 3, Fig. 4; docs/methods.md#balanced-feature-pyramid)."""
from collections import OrderedDict
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from fvcore.nn import weight_init

from ..config import check_choice, check_range, config_keys
from .resize import add_upsampled, generic_graph, max_pool_to

__all__ = ["NonLocalBlock2d", "BalancedFeaturePyramid", "build_bfp_backbone", "REFINE_TYPES"]

REFINE_TYPES = ("none", "conv", "non_local")


def _conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a 1x1 convolution of (B, C, H, W) ``x``; under ``torch.compile`` as a matrix
    product over the channels (the same values to rounding), since inductor's convolution-backward
    lowering fixes the input's size and would recompile for every new one."""
    if not torch.compiler.is_compiling():
        return conv(x)
    b, _, h, w = x.shape
    y = F.linear(x.flatten(2).transpose(1, 2), conv.weight.flatten(1), conv.bias)
    return y.transpose(1, 2).reshape(b, -1, h, w)


class NonLocalBlock2d(nn.Module):
    """Embedded-Gaussian non-local block, as the BFP's refinement (docs/methods.md#balanced-feature-pyramid, step 3).

    ``y = x + W_out(softmax(theta(x)^T phi(x)) g(x))`` over all H*W positions, with 1x1
    convolutions theta, phi, g (``channels -> channels``, reduction 1) and W_out. As in the
    reference implementation the dot product is not scaled by 1/sqrt(d), and W_out starts at
    zero so that the block starts as the identity. See :meth:`attend` for the two ways the
    attention is computed. Under ``torch.autocast`` theta, phi, g and the attention run in
    float32 (unscaled logits in 16 bits lose several percent), W_out in the autocast type.

    Args:
        channels: C, channels of the input and output.

    Shapes: input and output (B, C, H, W), same dtype.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.theta = nn.Conv2d(channels, channels, 1)
        self.phi = nn.Conv2d(channels, channels, 1)
        self.g = nn.Conv2d(channels, channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        for conv in (self.theta, self.phi, self.g):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def attend(self, x: torch.Tensor, fused: bool = True) -> torch.Tensor:
        """The attention output before W_out, (B, C, H, W).

        Args:
            x: (B, C, H, W).
            fused: True (the default) for PyTorch's ``scaled_dot_product_attention`` with
                ``scale=1``; False for explicit matmuls and softmax, the reference's formula,
                equal in value to float rounding. ``benchmarks/`` measures both: the fused
                kernel is the faster, forward and backward, and keeps no HW x HW attention
                matrix for the backward pass.
        """
        b, c, h, w = x.shape
        # (B, HW, C) each: one head over the H*W positions.
        query, key, value = (_conv1x1(conv, x).flatten(2).transpose(1, 2) for conv in (self.theta, self.phi, self.g))
        if fused:
            # Contiguous channels, or PyTorch falls back to its unfused implementation.
            query, key, value = (t.contiguous()[:, None] for t in (query, key, value))
            y = F.scaled_dot_product_attention(query, key, value, scale=1.0)[:, 0]
        else:
            y = torch.softmax(query @ key.transpose(1, 2), dim=-1) @ value
        return y.transpose(1, 2).reshape(b, c, h, w).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            # The attention in float32, theta and phi included: with unscaled logits of std ~10
            # a 16-bit attention is 3 % (bfloat16) off in the output (benchmarks/precision.py).
            with torch.autocast(x.device.type, enabled=False):
                y = self.attend(x.float(), fused=not torch.compiler.is_compiling())
            return x + _conv1x1(self.out, y)
        # Under torch.compile the explicit form: inductor fuses it, and its fused-attention
        # kernel does not take symbolic sizes (dynamic shapes).
        return x + _conv1x1(self.out, self.attend(x, fused=not torch.compiler.is_compiling()))


def _add(x: torch.Tensor, y: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``x + y``, written into ``x`` when ``inplace``."""
    return x.add_(y) if inplace else x + y


class BalancedFeaturePyramid(Backbone):
    """Wraps an FPN backbone and balances its levels (docs/methods.md#balanced-feature-pyramid).

    For the FPN outputs ordered by stride (e.g. P2–P6) and the refine level r:

    1. rescale every level to the size of level r: finer levels by adaptive max pooling,
       coarser ones by nearest upsampling;
    2. integrate: ``C = (1 / L) * sum_l C_l`` (no parameters);
    3. refine C with a non-local block, a 3x3 conv followed by a ReLU (as the reference
       implementation's ``ConvModule``; submodules ``refine.conv`` and ``refine.relu``), or
       nothing;
    4. strengthen: rescale C back to each level (nearest upsampling for finer levels,
       adaptive max pooling for coarser) and add it to that level.

    The output has the same names, strides and channels as the wrapped FPN, so anything
    built on it works unchanged.

    Args:
        fpn: a :class:`Backbone` whose outputs all have the same number of channels.
        refine_level: index r of the integration level in the outputs ordered by stride.
        refine_type: ``"non_local"``, ``"conv"`` or ``"none"``.

    Raises:
        ValueError: if the levels have different channels.
        ArgumentError: if ``refine_level`` is out of range or ``refine_type`` unknown, naming
            the argument (the ``MODEL.LIBRA.BFP`` key when built by :func:`build_bfp_backbone`).
    """

    def __init__(self, fpn: Backbone, refine_level: int = 2, refine_type: str = "non_local"):
        super().__init__()
        self.fpn = fpn
        shapes = fpn.output_shape()
        self._out_features = sorted(shapes, key=lambda name: shapes[name].stride)
        self._out_feature_strides = {k: shapes[k].stride for k in self._out_features}
        self._out_feature_channels = {k: shapes[k].channels for k in self._out_features}
        channels = set(self._out_feature_channels.values())
        if len(channels) != 1:
            raise ValueError(
                f"the balanced feature pyramid needs levels of equal channels, got {self._out_feature_channels}"
            )
        num_levels = len(self._out_features)
        self.refine_level = check_range("refine_level", refine_level, 0, num_levels - 1)
        self.refine_type = check_choice("refine_type", refine_type, REFINE_TYPES)
        (c,) = channels
        if refine_type == "non_local":
            self.refine = NonLocalBlock2d(c)
        elif refine_type == "conv":
            conv = nn.Conv2d(c, c, 3, padding=1)
            weight_init.c2_xavier_fill(conv)
            self.refine = nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU()))
        else:
            self.refine = nn.Identity()

    @property
    def size_divisibility(self) -> int:
        return self.fpn.size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return self.fpn.padding_constraints

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: images, (B, 3, H, W).

        Returns:
            dict of level name -> (B, C, H_l, W_l), the balanced FPN levels.
        """
        features = self.fpn(x)
        levels = [features[name] for name in self._out_features]
        strides = [self._out_feature_strides[name] for name in self._out_features]
        r = self.refine_level
        # Integrate: finer levels are max-pooled down, coarser ones added upsampled.
        total = levels[r]
        for f, stride in zip(levels[:r], strides[:r]):
            total = total + max_pool_to(f, total.shape[-2:], strides[r] // stride)
        for f in levels[r + 1 :]:
            total = add_upsampled(total, f)
        balanced = self.refine(total / len(levels))
        # Strengthen: the balanced map, upsampled to the finer levels and pooled to the coarser.
        # Without autograd the FPN's levels, used by nothing else, are strengthened in place.
        inplace = not torch.is_grad_enabled() and not generic_graph()
        out = [add_upsampled(f, balanced, inplace=inplace) for f in levels[:r]]
        out.append(_add(levels[r], balanced, inplace))
        out += [_add(f, max_pool_to(balanced, f.shape[-2:], stride // strides[r]), inplace)
                for f, stride in zip(levels[r + 1 :], strides[r + 1 :])]  # fmt: skip
        return dict(zip(self._out_features, out))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return self.fpn.output_shape()


@BACKBONE_REGISTRY.register()
def build_bfp_backbone(cfg, input_shape: ShapeSpec) -> BalancedFeaturePyramid:
    """Build the FPN named by ``MODEL.LIBRA.BFP.FPN_BACKBONE`` and wrap it in a BFP.

    Select it with ``MODEL.BACKBONE.NAME: "build_bfp_backbone"``.

    Raises:
        ValueError: for an unknown FPN builder name, refine type or refine level, naming the key.
    """
    name = cfg.MODEL.LIBRA.BFP.FPN_BACKBONE
    if name == "build_bfp_backbone" or name not in BACKBONE_REGISTRY:
        available = sorted(k for k, _ in BACKBONE_REGISTRY if k != "build_bfp_backbone")
        raise ValueError(
            f"MODEL.LIBRA.BFP.FPN_BACKBONE = {name!r} is not an FPN builder in BACKBONE_REGISTRY; "
            f"choose one of {available}"
        )
    fpn = BACKBONE_REGISTRY.get(name)(cfg, input_shape)
    bfp = cfg.MODEL.LIBRA.BFP
    with config_keys(refine_level="MODEL.LIBRA.BFP.REFINE_LEVEL", refine_type="MODEL.LIBRA.BFP.REFINE_TYPE"):
        return BalancedFeaturePyramid(fpn, refine_level=bfp.REFINE_LEVEL, refine_type=bfp.REFINE_TYPE)
