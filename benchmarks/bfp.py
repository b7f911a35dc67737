"""The balanced feature pyramid at COCO size: each refine type, and the non-local block's two paths.

Inputs: FPN levels P2–P6 of one 800 x 1333 image padded to 800 x 1344 (256 channels; P2
200 x 336 ... P6 13 x 21), refine level P4, as in ``libra_rcnn_R_50_FPN_1x``. The levels are
given tensors (a stand-in FPN), so only the BFP is measured.

- Per refine type (``none``, ``conv``, ``non_local``): forward + backward seconds, and the
  memory autograd holds for the backward pass (bytes of the tensors the BFP saves, the input
  levels excluded; the same on every device), plus the CUDA peak above the inputs on a GPU.
- Non-local block at P4: PyTorch's fused ``scaled_dot_product_attention`` vs explicit matmuls
  and softmax, forward alone (``no_grad``, as in inference) and forward + backward, their
  largest differences in value and gradient (:class:`libra_rcnn.NonLocalBlock2d` runs the fused
  one; the plain one is its ``attend(x, fused=False)``).
"""

from typing import Dict, List

import torch

from .common import MIB, median, peak_mib, repeat_timed, reset_peak, synchronize

PADDED_HW = (800, 1344)
STRIDES = (4, 8, 16, 32, 64)  # P2-P6
CHANNELS = 256
REFINE_LEVEL = 2  # P4


def pyramid_sizes(hw=PADDED_HW) -> List[tuple]:
    """(H, W) of P2–P6 for a padded input of size ``hw``: ceil division by each stride."""
    return [(-(-hw[0] // s), -(-hw[1] // s)) for s in STRIDES]


def make_levels(batch: int, device: str, seed: int) -> Dict[str, torch.Tensor]:
    """Random FPN levels (float32, requiring gradients), named p2–p6."""
    g = torch.Generator().manual_seed(seed)
    return {
        f"p{i + 2}": torch.randn(batch, CHANNELS, h, w, generator=g).to(device).requires_grad_()
        for i, (h, w) in enumerate(pyramid_sizes())
    }


def build_bfp(levels: Dict[str, torch.Tensor], refine_type: str, seed: int):
    """A :class:`libra_rcnn.BalancedFeaturePyramid` over a stand-in FPN that returns ``levels``.

    The non-local block's output projection, zero at initialisation, is drawn at random so
    that every part of the block has a gradient.
    """
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import Backbone

    from libra_rcnn import BalancedFeaturePyramid

    class GivenLevels(Backbone):
        def __init__(self):
            super().__init__()
            self._out_features = list(levels)

        def forward(self, x):
            return dict(levels)

        def output_shape(self):
            return {k: ShapeSpec(channels=CHANNELS, stride=s) for k, s in zip(levels, STRIDES)}

    torch.manual_seed(seed)
    bfp = BalancedFeaturePyramid(GivenLevels(), REFINE_LEVEL, refine_type)
    if refine_type == "non_local":
        torch.nn.init.normal_(bfp.refine.out.weight, std=0.01)
    return bfp.to(next(iter(levels.values())).device)


def saved_for_backward_mib(fn, exclude: List[torch.Tensor]) -> float:
    """MiB of the distinct tensors autograd saves while ``fn`` runs, those of ``exclude`` apart."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values()) / MIB


def measure_refine_types(device: str, batch: int, warmup: int, repeats: int, seed: int) -> List[dict]:
    """Forward + backward of the BFP for each refine type on ``device``."""
    rows = []
    for refine_type in ("none", "conv", "non_local"):
        levels = make_levels(batch, device, seed)
        bfp = build_bfp(levels, refine_type, seed)
        inputs = list(levels.values())

        def forward():
            return bfp(None)

        def step():
            out = forward()
            torch.autograd.backward(list(out.values()), [torch.ones_like(v) for v in out.values()])

        times = repeat_timed(step, device, warmup, repeats)
        row = {
            "refine_type": refine_type,
            "device": device,
            "batch": batch,
            "fwd_bwd_s": median(times),
            "times_s": [round(t, 5) for t in times],
            "saved_mib": saved_for_backward_mib(forward, inputs),
        }
        if device.startswith("cuda"):
            for p in list(bfp.parameters()) + inputs:
                p.grad = None
            synchronize(device)
            base = torch.cuda.memory_allocated(device) / MIB
            reset_peak(device)
            step()
            row["cuda_peak_above_inputs_mib"] = peak_mib(device) - base
        rows.append(row)
    return rows


def measure_non_local(device: str, batches: List[int], warmup: int, repeats: int, seed: int) -> List[dict]:
    """The non-local block at P4 (256 x 50 x 84), fused vs plain, on ``device``."""
    from libra_rcnn import NonLocalBlock2d

    h, w = pyramid_sizes()[REFINE_LEVEL]
    rows = []
    for batch in batches:
        torch.manual_seed(seed)
        block = NonLocalBlock2d(CHANNELS)
        torch.nn.init.normal_(block.out.weight, std=0.01)
        block = block.to(device)
        x = torch.randn(batch, CHANNELS, h, w, generator=torch.Generator().manual_seed(seed)).to(device)
        x.requires_grad_()

        def run(fused: bool, backward: bool):
            def call():
                if not backward:
                    with torch.no_grad():
                        return x + block.out(block.attend(x, fused=fused))
                y = x + block.out(block.attend(x, fused=fused))
                y.backward(torch.ones_like(y))

            return call

        row = {"device": device, "batch": batch, "positions": h * w}
        for fused in (False, True):
            name = "fused" if fused else "plain"
            row[f"{name}_fwd_s"] = median(repeat_timed(run(fused, False), device, warmup, repeats))
            row[f"{name}_fwd_bwd_s"] = median(repeat_timed(run(fused, True), device, warmup, repeats))
        # Values and gradients of the two paths, on the same input and weights.
        grads = {}
        for fused in (False, True):
            for p in list(block.parameters()) + [x]:
                p.grad = None
            y = x + block.out(block.attend(x, fused=fused))
            y.backward(torch.ones_like(y))
            grads[fused] = (y.detach(), [p.grad.clone() for p in [x] + list(block.parameters())])
        row["max_abs_diff"] = (grads[True][0] - grads[False][0]).abs().max().item()
        row["max_grad_diff_rel"] = max(
            ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()
            for a, b in zip(grads[True][1], grads[False][1])
            if b.abs().max() > 1e-6  # phi's bias has a zero gradient: softmax ignores a constant
        )
        rows.append(row)
    return rows
