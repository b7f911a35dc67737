"""Balanced feature pyramid (Libra R-CNN §3.2, Eq. 3, Fig. 4; METHODS.md §3)."""
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from fvcore.nn import weight_init

from .config import REFINE_TYPES, check_choice, check_range

__all__ = ["NonLocalBlock2d", "BalancedFeaturePyramid", "build_bfp_backbone"]


def _integer_ratio(large: Sequence[int], small: Sequence[int]) -> Optional[Tuple[int, int]]:
    """(kh, kw) if ``large == (kh * small[0], kw * small[1])``, else None."""
    (hl, wl), (hs, ws) = large, small
    if hs > 0 and ws > 0 and hl % hs == 0 and wl % ws == 0:
        return hl // hs, wl // ws
    return None


def _recording() -> bool:
    """True while ``torch.jit.trace`` or ``torch.onnx.export`` records the model.

    The graph recorded then must hold for every input size, so the BFP rescales with
    :func:`_adaptive_max_pool_symbolic` and :func:`_upsample_nearest_symbolic`, whose
    shapes stay symbolic, instead of the eager fast paths, which choose a kernel by the
    sizes of the recorded input.
    """
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _size(s, device: torch.device) -> torch.Tensor:
    """A size as a 0-dim int64 tensor: traced sizes are tensors already, eager ones ints."""
    return s.to(device) if isinstance(s, torch.Tensor) else torch.tensor(s, device=device)


def _pooling_windows(in_size, out_size, device: torch.device) -> torch.Tensor:
    """(out_size, K) int64 indices of adaptive pooling's windows along one axis.

    Window i covers ``[floor(i * in / out), ceil((i + 1) * in / out))``, PyTorch's adaptive
    pooling windows; K is the longest window, and shorter windows repeat their last index
    (which leaves their maximum unchanged).
    """
    n, m = _size(in_size, device), _size(out_size, device)
    i = torch.arange(m, device=device)
    start = i * n // m
    end = ((i + 1) * n + m - 1) // m
    k = torch.arange((end - start).max(), device=device)
    return torch.minimum(start[:, None] + k, end[:, None] - 1)


def _adaptive_max_pool_symbolic(x: torch.Tensor, size: Sequence) -> torch.Tensor:
    """``F.adaptive_max_pool2d(x, size)`` for (B, C, H, W) x, by gathers and max reductions.

    The same values as PyTorch's kernel, from ops that trace and export to ONNX with
    symbolic H, W and ``size`` (ONNX has no adaptive pooling, and the exporter's stand-in
    needs static sizes that divide).
    """
    rows = _pooling_windows(x.shape[-2], size[0], x.device)  # (h, Kh)
    cols = _pooling_windows(x.shape[-1], size[1], x.device)  # (w, Kw)
    x = x[:, :, rows].amax(dim=3)  # (B, C, h, W)
    return x[:, :, :, cols].amax(dim=4)  # (B, C, h, w)


def _nearest_indices(in_size, out_size, device: torch.device) -> torch.Tensor:
    """(out_size,) int64 source index of each output of nearest upsampling along one axis.

    ``min(floor(i * (in / out)), in - 1)`` in float32, as PyTorch's ``nearest`` kernel
    computes it (the float32 scale rounds, so this is not always ``i * in // out``).
    """
    n, m = _size(in_size, device), _size(out_size, device)
    scale = n.float() / m.float()
    i = torch.arange(m, device=device).float()
    return torch.minimum((i * scale).floor().long(), n - 1)


def _upsample_nearest_symbolic(y: torch.Tensor, size: Sequence) -> torch.Tensor:
    """``F.interpolate(y, size, mode="nearest")`` for (B, C, h, w) y, by index gathers.

    The same values, from ops that trace and export to ONNX with symbolic sizes.
    """
    y = y.index_select(2, _nearest_indices(y.shape[-2], size[0], y.device))
    return y.index_select(3, _nearest_indices(y.shape[-1], size[1], y.device))


def _bounded_windows(in_size, out_size, length: int, device: torch.device) -> torch.Tensor:
    """(out_size, length) int64: :func:`_pooling_windows` with a window length fixed ahead.

    ``length`` must be at least the longest window, ``ceil(in / out) + 1`` covers any sizes;
    with sizes that are SymInts (``torch.compile`` with dynamic shapes) every op's shape is
    known from the sizes alone, so nothing depends on values.
    """
    i = torch.arange(out_size, device=device)
    start = i * in_size // out_size
    end = ((i + 1) * in_size + out_size - 1) // out_size
    return torch.minimum(start[:, None] + torch.arange(length, device=device), end[:, None] - 1)


def _max_pool_to(x: torch.Tensor, size: Sequence[int], ratio: int = 1) -> torch.Tensor:
    """Adaptive max pooling of (B, C, H, W) to ``size`` (step 1 and 4 of METHODS.md §3).

    Where H and W are whole multiples of ``size`` (FPN levels of an input padded to the
    backbone's size divisibility), adaptive pooling is a plain k x k max pooling of stride k:
    the same windows, values and gradients, by a faster kernel. While tracing or exporting,
    :func:`_adaptive_max_pool_symbolic` (same values, any size). Under ``torch.compile``, the
    same windows gathered with a length fixed by ``ratio`` (the levels' stride ratio): no branch
    on the sizes, so no recompilation when they change.
    """
    if _recording():
        return _adaptive_max_pool_symbolic(x, size)
    if torch.compiler.is_compiling():
        rows = _bounded_windows(x.shape[-2], size[0], ratio + 1, x.device)
        cols = _bounded_windows(x.shape[-1], size[1], ratio + 1, x.device)
        b, c = x.shape[:2]
        x = x.index_select(2, rows.flatten()).unflatten(2, rows.shape).amax(dim=3)
        return x.index_select(3, cols.flatten()).unflatten(3, cols.shape).amax(dim=4)
    k = _integer_ratio(x.shape[-2:], size)
    if k is None:
        return F.adaptive_max_pool2d(x, tuple(size))
    return F.max_pool2d(x, k, k)


def _add_upsampled(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + nearest_upsample(y, size of x)`` for (B, C, H, W) x and (B, C, h, w) y.

    Where H, W are whole multiples of h, w, y is broadcast over k x k blocks of x instead of
    being upsampled first: the same values, without the upsampled copy of y. While tracing
    or exporting, :func:`_upsample_nearest_symbolic` (same values, any size).
    """
    if _recording():
        return x + _upsample_nearest_symbolic(y, x.shape[-2:])
    if torch.compiler.is_compiling():
        return x + F.interpolate(y, size=x.shape[-2:], mode="nearest")
    k = _integer_ratio(x.shape[-2:], y.shape[-2:])
    if k is None:
        return x + F.interpolate(y, size=x.shape[-2:], mode="nearest")
    (b, c, h, w), (kh, kw) = y.shape, k
    return (x.reshape(b, c, h, kh, w, kw) + y[:, :, :, None, :, None]).reshape(x.shape)


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
    """Embedded-Gaussian non-local block, as the BFP's refinement (METHODS.md §3, step 3).

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


class BalancedFeaturePyramid(Backbone):
    """Wraps an FPN backbone and balances its levels (METHODS.md §3).

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
        ValueError: if the levels have different channels, ``refine_level`` is out of range
            or ``refine_type`` unknown (naming the ``MODEL.LIBRA.BFP`` key).
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
        self.refine_level = check_range(
            "MODEL.LIBRA.BFP.REFINE_LEVEL", refine_level, 0, num_levels - 1
        )
        self.refine_type = check_choice("MODEL.LIBRA.BFP.REFINE_TYPE", refine_type, REFINE_TYPES)
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
            total = total + _max_pool_to(f, total.shape[-2:], strides[r] // stride)
        for f in levels[r + 1 :]:
            total = _add_upsampled(total, f)
        balanced = self.refine(total / len(levels))
        # Strengthen: the balanced map, upsampled to the finer levels and pooled to the coarser.
        out = [_add_upsampled(f, balanced) for f in levels[:r]]
        out.append(levels[r] + balanced)
        out += [f + _max_pool_to(balanced, f.shape[-2:], stride // strides[r])
                for f, stride in zip(levels[r + 1 :], strides[r + 1 :])]  # fmt: skip
        return dict(zip(self._out_features, out))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return self.fpn.output_shape()


@BACKBONE_REGISTRY.register()
def build_bfp_backbone(cfg, input_shape: ShapeSpec) -> BalancedFeaturePyramid:
    """Build the FPN named by ``MODEL.LIBRA.BFP.FPN_BACKBONE`` and wrap it in a BFP.

    Select it with ``MODEL.BACKBONE.NAME: "build_bfp_backbone"``.

    Raises:
        ValueError: for an unknown FPN builder name, refine type or refine level.
    """
    name = cfg.MODEL.LIBRA.BFP.FPN_BACKBONE
    if name == "build_bfp_backbone" or name not in BACKBONE_REGISTRY:
        available = sorted(k for k, _ in BACKBONE_REGISTRY if k != "build_bfp_backbone")
        raise ValueError(
            f"MODEL.LIBRA.BFP.FPN_BACKBONE = {name!r} is not an FPN builder in BACKBONE_REGISTRY; "
            f"choose one of {available}"
        )
    fpn = BACKBONE_REGISTRY.get(name)(cfg, input_shape)
    return BalancedFeaturePyramid(
        fpn,
        refine_level=cfg.MODEL.LIBRA.BFP.REFINE_LEVEL,
        refine_type=cfg.MODEL.LIBRA.BFP.REFINE_TYPE,
    )
