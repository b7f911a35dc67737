"""Rescaling feature maps between pyramid levels, for the balanced feature pyramid
(docs/methods.md#balanced-feature-pyramid).

Two operations, :func:`max_pool_to` (``F.adaptive_max_pool2d``) and :func:`add_upsampled`
(``x + F.interpolate(y, size of x, mode="nearest")``). Where the graph recorded must hold for every
input size (``torch.jit.trace``, ``torch.onnx.export`` with dynamic sizes, ``torch.compile`` with
dynamic shapes), each is one implementation by gathers, equal in value to PyTorch's kernels:
each output's pooling window (PyTorch's windows, with a length fixed by the levels' stride ratio),
and the source row and column of each upsampled output (PyTorch's float32 index rule; ONNX
Runtime's Resize differs from it for some sizes). Eager, PyTorch's own kernels run; where the sizes
are whole multiples of each other (FPN levels of an input padded to the backbone's size
divisibility, the usual case), a k x k max pooling of stride k (without autograd, maxima over whole
rows) and a broadcast over k x k blocks (without autograd, in place), with the same values and
gradients. ``benchmarks/bfp.py`` (its ``resize`` rows) measures each
against the gathers.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["generic_graph", "pooling_windows", "nearest_indices", "gather_max_pool", "gather_upsample", "max_pool_to", "add_upsampled"]


def generic_graph() -> bool:
    """True while the graph recorded must hold for every size (tracing, ONNX export, compile)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _integer_ratio(large: Sequence[int], small: Sequence[int]) -> Optional[Tuple[int, int]]:
    """(kh, kw) if ``large == (kh * small[0], kw * small[1])``, else None."""
    (hl, wl), (hs, ws) = large, small
    if hs > 0 and ws > 0 and hl % hs == 0 and wl % ws == 0:
        return hl // hs, wl // ws
    return None


def _as_tensor(size, device: torch.device) -> torch.Tensor:
    """A size as a 0-dim int64 tensor: sizes are tensors while tracing, ints (or SymInts) otherwise."""
    if isinstance(size, torch.Tensor):
        return size.to(device)
    return torch.full((), size, dtype=torch.int64, device=device)


def pooling_windows(in_size, out_size, length: int, device: torch.device) -> torch.Tensor:
    """(out_size, length) int64: the input indices of each output's adaptive-pooling window.

    Output i covers ``[floor(i * in / out), ceil((i + 1) * in / out))``, PyTorch's windows;
    a window shorter than ``length`` repeats its last index (which leaves its maximum as it is).
    ``length`` must be at least the longest window: ``ratio + 1`` for levels whose sizes are
    ``ceil(S / stride)`` of one input size S and whose strides differ by ``ratio``.
    """
    n, m = _as_tensor(in_size, device), _as_tensor(out_size, device)
    i = torch.arange(out_size, device=device)
    start = i * n // m
    end = ((i + 1) * n + m - 1) // m
    return torch.minimum(start[:, None] + torch.arange(length, device=device), end[:, None] - 1)


def nearest_indices(in_size, out_size, device: torch.device) -> torch.Tensor:
    """(out_size,) int64: the source index of each output of nearest upsampling along one axis.

    ``min(floor(i * s), in - 1)`` with ``s = in / out`` and the product in float32, as PyTorch's
    ``nearest`` kernel computes them (the float32 rounding makes this differ from
    ``i * in // out`` for some sizes).
    """
    n, m = _as_tensor(in_size, device), _as_tensor(out_size, device)
    scale = n.float() / m.float()
    i = torch.arange(out_size, device=device).float()
    return torch.minimum((i * scale).floor().long(), n - 1)


def gather_max_pool(x: torch.Tensor, size: Sequence, length: int) -> torch.Tensor:
    """``F.adaptive_max_pool2d(x, size)`` for (B, C, H, W) ``x`` by gathered windows of at most
    ``length`` elements (:func:`pooling_windows`): the same values, in every mode."""
    rows = pooling_windows(x.shape[-2], size[0], length, x.device)
    cols = pooling_windows(x.shape[-1], size[1], length, x.device)
    x = x.index_select(2, rows.flatten()).unflatten(2, rows.shape).amax(dim=3)
    return x.index_select(3, cols.flatten()).unflatten(3, cols.shape).amax(dim=4)


def gather_upsample(y: torch.Tensor, size: Sequence) -> torch.Tensor:
    """``F.interpolate(y, size, mode="nearest")`` for (B, C, h, w) ``y`` by index gathers
    (:func:`nearest_indices`): the same values, in every mode."""
    y = y.index_select(2, nearest_indices(y.shape[-2], size[0], y.device))
    return y.index_select(3, nearest_indices(y.shape[-1], size[1], y.device))


def max_pool_to(x: torch.Tensor, size: Sequence[int], ratio: int) -> torch.Tensor:
    """Adaptive max pooling of (B, C, H, W) ``x`` to ``size`` (h, w), (B, C, h, w).

    Args:
        x: a finer level.
        size: the coarser level's (h, w).
        ratio: the levels' stride ratio (>= 1): windows are at most ``ratio + 1`` long.
    """
    if generic_graph():
        return gather_max_pool(x, size, ratio + 1)
    k = _integer_ratio(x.shape[-2:], size)
    if k is None:
        return F.adaptive_max_pool2d(x, tuple(size))
    if x.requires_grad and torch.is_grad_enabled():
        return F.max_pool2d(x, k, k)  # its gradient: to the first maximum of each window, as the reference's
    return _block_max(x, *k)


def _block_max(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """``F.max_pool2d(x, (kh, kw))`` for (B, C, H, W) ``x`` with H, W multiples of kh, kw: the same
    values, by reductions over whole contiguous rows (PyTorch's CPU kernel for NCHW walks each
    window separately, and takes about twice as long at P2)."""
    b, c, hh, ww = x.shape
    h, w = hh // kh, ww // kw
    rows = x.reshape(b, c, h, kh, ww)
    rows = torch.maximum(rows[:, :, :, 0], rows[:, :, :, 1]) if kh == 2 else rows.amax(dim=3)
    return rows.reshape(b, c, h, w, kw).amax(dim=4)


def add_upsampled(x: torch.Tensor, y: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``x + nearest_upsample(y, size of x)`` for (B, C, H, W) ``x`` and (B, C, h, w) ``y``.

    ``inplace=True`` writes the sum into ``x`` and returns it, where ``x`` is contiguous, needs no
    gradient and no size-generic graph is being recorded (otherwise the sum is a new tensor). At
    inference this saves allocating a map of the finer level's size, which on the CPU costs more
    than the addition (the fresh pages are faulted in one by one).
    """
    if generic_graph():
        return x + gather_upsample(y, x.shape[-2:])
    k = _integer_ratio(x.shape[-2:], y.shape[-2:])
    inplace = inplace and x.is_contiguous() and not x.requires_grad
    if k is None:
        up = F.interpolate(y, size=x.shape[-2:], mode="nearest")
        return x.add_(up) if inplace else x + up
    (b, c, h, w), (kh, kw) = y.shape, k
    if inplace:
        # Rows repeated by broadcasting over whole contiguous rows of x: columns first, on y's size.
        rows = y[..., None].expand(b, c, h, w, kw).reshape(b, c, h, 1, w * kw)
        x.view(b, c, h, kh, w * kw).add_(rows)
        return x
    return (x.reshape(b, c, h, kh, w, kw) + y[:, :, :, None, :, None]).reshape(x.shape)
