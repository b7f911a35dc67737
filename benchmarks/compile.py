"""``torch.compile`` of the balanced feature pyramid, the backbone and whole detectors, on the CPU.

    .venv/bin/python -m benchmarks.compile [--out benchmarks/results/compile.json]

1. **The BFP** (non-local refinement at P4 of P2-P6, 256 channels): graph breaks
   (``torch._dynamo.explain``), the first call's compile time with inductor and dynamic shapes,
   the number of graphs after five COCO-like input sizes (recompilations), and the largest
   difference to eager in the outputs and the levels' gradients.
2. **The backbone** (FashionScenes Libra R-CNN: ResNet-18 + GN, 64-channel FPN, BFP; 4 images of
   256 px): eager vs compiled forward + backward, median seconds, the first call's compile time.
3. **Whole detectors**, one training forward each (FashionScenes Faster R-CNN and Libra R-CNN):
   the graph breaks dynamo reports, grouped by where they are (Detectron2's code or ours).
"""
import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

from .common import repeat_timed

REPO = Path(__file__).resolve().parents[1]
SIZES = [(800, 1216), (640, 1024), (736, 1344), (800, 1088), (704, 960)]


def coco_levels(height: int, width: int, channels: int, requires_grad: bool, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random P2-P6 of an input padded to 32, as Detectron2's FPN shapes them (P6 = ceil(P5 / 2))."""
    g = torch.Generator().manual_seed(seed)
    h, w = -(-height // 32) * 32, -(-width // 32) * 32
    levels = {f"p{i}": torch.randn(1, channels, h >> i, w >> i, generator=g) for i in range(2, 6)}
    levels["p6"] = torch.randn(1, channels, -(-(h >> 5) // 2), -(-(w >> 5) // 2), generator=g)
    return {k: v.requires_grad_(requires_grad) for k, v in levels.items()}


def bfp_module(channels: int, refine: str = "non_local"):
    """The BFP alone, over given levels (its input is the dict of levels)."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import Backbone

    from libra_rcnn import BalancedFeaturePyramid

    class Given(Backbone):
        def forward(self, x):
            return x

        def output_shape(self):
            return {f"p{i}": ShapeSpec(channels=channels, stride=2**i) for i in range(2, 7)}

    torch.manual_seed(0)
    bfp = BalancedFeaturePyramid(Given(), refine_level=2, refine_type=refine)
    with torch.no_grad():
        for p in bfp.refine.parameters():
            p.normal_(0, 0.05)
    return bfp


def _forward_backward(module, inputs: Dict[str, torch.Tensor]):
    out = module(inputs)
    sum(v.float().square().mean() for v in out.values()).backward()
    return out


def measure_bfp(channels: int = 256, refine: str = "non_local", sizes=SIZES) -> dict:
    """Graph breaks, compile time, recompilations over ``sizes`` and the differences to eager."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    bfp = bfp_module(channels, refine)
    explained = torch._dynamo.explain(bfp)(coco_levels(*sizes[0], channels, False))
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(bfp, backend="inductor", dynamic=True)
    rows, worst = [], {"output": 0.0, "gradient": 0.0}
    for i, (h, w) in enumerate(sizes):
        levels = coco_levels(h, w, channels, True, seed=i)
        twin = {k: v.detach().clone().requires_grad_() for k, v in levels.items()}
        start = time.perf_counter()
        out = _forward_backward(compiled, levels)
        seconds = time.perf_counter() - start
        ref = _forward_backward(bfp, twin)
        worst["output"] = max(worst["output"], max(float((out[k] - ref[k]).abs().max()) for k in ref))
        worst["gradient"] = max(worst["gradient"], max(float((levels[k].grad - twin[k].grad).abs().max()) for k in ref))
        rows.append({"size": [h, w], "seconds": round(seconds, 3), "graphs": int(counters["stats"]["unique_graphs"])})
    return {"refine": refine, "channels": channels, "graph_count": explained.graph_count,
            "graph_breaks": explained.graph_break_count, "first_call_s": rows[0]["seconds"], "calls": rows,
            "recompilations": rows[-1]["graphs"] - 1, "max_abs_diff": worst}  # fmt: skip


def measure_backbone(repeats: int = 5) -> dict:
    """Eager vs inductor-compiled forward + backward of the FashionScenes Libra R-CNN backbone."""
    import torch._dynamo
    from detectron2.modeling import build_backbone

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import load_cfg

    cfg = load_cfg("configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml", ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    backbone = build_backbone(cfg).train()
    images = torch.randn(4, 3, 256, 256, generator=torch.Generator().manual_seed(1))

    def step(module):
        def run():
            backbone.zero_grad(set_to_none=True)
            out = module(images)
            sum(v.square().mean() for v in out.values()).backward()

        return run

    explained = torch._dynamo.explain(backbone)(images)
    torch._dynamo.reset()
    eager = statistics.median(repeat_timed(step(backbone), "cpu", 0, repeats))
    compiled = torch.compile(backbone, backend="inductor")
    start = time.perf_counter()
    step(compiled)()
    first = time.perf_counter() - start
    fast = statistics.median(repeat_timed(step(compiled), "cpu", 0, repeats))
    return {"model": "FashionScenes Libra R-CNN backbone (ResNet-18 + GN, FPN 64, BFP), 4 x 256 x 256",
            "graph_count": explained.graph_count, "graph_breaks": explained.graph_break_count,
            "eager_s": round(eager, 4), "compiled_s": round(fast, 4), "speedup": round(eager / fast, 3),
            "first_call_s": round(first, 1), "calls_to_repay_the_compile": round(first / max(eager - fast, 1e-9), 1)
            if eager > fast else None}  # fmt: skip


def _break_site(reason) -> str:
    """The user frame of a graph break: ``file:line`` from its package on."""
    for frame in reversed(getattr(reason, "user_stack", []) or []):
        name = os.path.abspath(frame.filename)
        marker = os.sep + "site-packages" + os.sep
        if marker in name:
            name = name.split(marker, 1)[1]
        elif "libra_rcnn" + os.sep in name:
            name = "libra_rcnn" + name.split("libra_rcnn", 1)[1]
        if not name.startswith("torch" + os.sep):
            return f"{name}:{frame.lineno}"
    return "unknown"


def graph_breaks(configs: List[str], dataset_root: str) -> Dict[str, dict]:
    """Config -> graph count, breaks, and breaks per site, of one training forward."""
    import torch._dynamo
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    import libra_rcnn

    from .host_syncs import training_batch

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import load_cfg

    libra_rcnn.register_fashion_scenes(os.path.join(dataset_root, "fashion_scenes"), prefix="compile_scenes")
    batch = training_batch("compile_scenes_train", 2)
    out = {}
    for name in configs:
        torch.manual_seed(0)
        model = build_model(load_cfg(f"configs/FashionScenes/{name}.yaml", ["MODEL.DEVICE", "cpu"])).train()
        torch._dynamo.reset()
        with EventStorage(0):
            explained = torch._dynamo.explain(model)(list(batch))
        sites = collections.Counter(_break_site(r) for r in explained.break_reasons)
        owners = collections.Counter(s.split(os.sep, 1)[0] for s in sites.elements())
        out[name] = {"graph_count": explained.graph_count, "graph_breaks": explained.graph_break_count,
                     "by_owner": dict(owners), "sites": dict(sites.most_common())}  # fmt: skip
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile", description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument("--datasets", default=os.environ.get("DETECTRON2_DATASETS", "datasets"))
    parser.add_argument("--parts", nargs="+", default=["bfp", "backbone", "models"], choices=["bfp", "backbone", "models"])
    args = parser.parse_args(argv)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if "bfp" in args.parts:
        result["bfp"] = [measure_bfp(refine=r) for r in ("non_local", "none", "conv")]
    if "backbone" in args.parts:
        result["backbone"] = measure_backbone()
    if "models" in args.parts:
        result["models"] = graph_breaks(["faster_rcnn_R_18_FPN_GN", "libra_rcnn_R_18_FPN_GN"], args.datasets)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
