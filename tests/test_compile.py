"""torch.compile of the balanced feature pyramid (benchmarks/compile.py measures more).

With the inductor backend and dynamic shapes, the BFP (non-local refinement) compiles into one
graph, with no graph break, once for all input sizes (no recompilation across COCO-like sizes),
and equals eager in its outputs and in its inputs' gradients to 1e-5.
"""
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from benchmarks.compile import bfp_module, coco_levels


def test_the_bfp_compiles_once_for_every_size_without_graph_breaks():
    bfp = bfp_module(channels=16)
    explained = torch._dynamo.explain(bfp)(coco_levels(320, 480, 16, False))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(bfp, backend="inductor", dynamic=True)
    for seed, (h, w) in enumerate([(320, 480), (256, 416), (352, 384)]):
        levels = coco_levels(h, w, 16, True, seed)
        twin = {k: v.detach().clone().requires_grad_() for k, v in levels.items()}
        out, ref = compiled(levels), bfp(twin)
        sum(v.square().mean() for v in out.values()).backward()
        sum(v.square().mean() for v in ref.values()).backward()
        for k in ref:
            assert float((out[k] - ref[k]).abs().max()) < 1e-5, (h, w, k)
            assert float((levels[k].grad - twin[k].grad).abs().max()) < 1e-5, (h, w, k)
    assert counters["stats"]["unique_graphs"] == 1  # no recompilation for the new sizes
