"""The arithmetic of the balancing at inference: multiply-adds of each COCO-size pair, per module.

Counted by Detectron2's ``FlopCountAnalysis`` (fvcore's counter: one multiply-add counts as one)
on the pair's 800 x 1333 image, with the models of :mod:`benchmarks.detectors` (same seed,
calibrated frozen BatchNorm, the Libra model with the baseline's common weights), in eval mode.
fvcore has no rule for ``scaled_dot_product_attention``, the non-local block's attention; it is
counted here as its two matrix products, Q Kᵀ and (softmax) V: ``B · heads · N · M · C`` each.

The Libra models' extra work at inference is the balanced feature pyramid; its non-local block
at the refine level (N = H·W positions, C channels) costs ``4 · N · C²`` (four 1x1 convolutions)
plus ``2 · N² · C`` (the attention): at P4 of an 800 x 1344 input, N = 50 · 84 = 4200 and
C = 256, 1.10 G + 9.03 G multiply-adds. The resizing (max pooling, nearest upsampling, sums)
has no multiply-adds but moves every level's map through memory.
"""
from typing import List

import torch

from .detectors import PAIRS, build_pair, inference_inputs

MODULES = ("backbone", "backbone.refine", "proposal_generator", "roi_heads", "head")


def sdpa_flop_jit(inputs, outputs) -> int:
    """fvcore handle of ``aten::scaled_dot_product_attention``: Q Kᵀ and the weighted sum of V."""
    q, k = (i.type().sizes() for i in inputs[:2])
    *lead, n, c = q
    m = k[-2]
    batch = 1
    for s in lead:
        batch *= s
    return batch * n * m * c * 2


def non_local_macs(height: int, width: int, channels: int) -> int:
    """Multiply-adds of the BFP's non-local block on one (C, H, W) map: the four 1x1 convolutions
    (theta, phi, g, out: ``4 · N · C²``) and the attention (``2 · N² · C``), N = H·W."""
    n = height * width
    return 4 * n * channels * channels + 2 * n * n * channels


def count_pair(pair, seed: int = 0) -> dict:
    """Multiply-adds of both models of a COCO-size ``pair`` on one image, total and per module.

    Returns:
        dict: ``baseline`` and ``libra``, each ``{"total": int, "modules": {name: int}}``, and
        ``ratio`` (Libra / baseline of the totals).
    """
    from detectron2.utils.analysis import FlopCountAnalysis

    models, batch = build_pair(pair, seed)
    image = inference_inputs(batch[:1])
    result = {}
    for key, model in zip(("baseline", "libra"), models):
        model.eval()
        counter = FlopCountAnalysis(model, image).set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
        counter.unsupported_ops_warnings(False)
        counter.uncalled_modules_warnings(False)
        by_module = counter.by_module()
        # Detectron2's counter traces the model inside a TracingAdapter, whose child is "model".
        result[key] = {"total": int(counter.total()),
                       "modules": {m: int(by_module[f"model.{m}"]) for m in MODULES if f"model.{m}" in by_module}}  # fmt: skip
    result["ratio"] = result["libra"]["total"] / result["baseline"]["total"]
    return result


def measure_flops(families: List[str], seed: int, log=print) -> List[dict]:
    """:func:`count_pair` of every COCO-size pair of ``families``."""
    rows = []
    for pair in PAIRS:
        if pair.suite != "COCO size" or pair.family not in families:
            continue
        log(f"  multiply-adds of {pair.baseline_name} and {pair.libra_name} ...")
        with torch.no_grad():
            counted = count_pair(pair, seed)
        rows.append({"baseline_name": pair.baseline_name, "libra_name": pair.libra_name, **counted})
    return rows
