"""Where a COCO-size pair's time goes: seconds per module and the operators that differ.

    .venv/bin/python -m benchmarks.profile_pair --family rcnn --phase inference
    .venv/bin/python -m benchmarks.profile_pair --family retinanet --phase train --repeats 3

Builds both models of the pair as :mod:`benchmarks.detectors` does (same seed, the baseline's
frozen BatchNorm calibrated, the Libra model with the baseline's common weights), in one
process, and alternates them on the same 800 x 1333 image:

1. the median seconds of each top-level module (the backbone's bottom-up and FPN, the BFP's
   refinement, the proposal generator, the RoI heads or the RetinaNet head), timed by forward
   hooks; in the training phase, forward and backward of the losses' sum (forward hooks time
   the forward only);
2. ``torch.profiler``'s operators by self CPU time, per model, and the operators whose total
   differs most between the two.

For finding where the time goes; the ratios themselves are measured by ``python -m benchmarks``,
which keeps each model in a process of its own.
"""
import argparse
import statistics
import time
from collections import defaultdict
from typing import Dict, List

import torch

from .detectors import PAIRS, build_pair, inference_inputs

MODULES = ("backbone", "backbone.bottom_up", "backbone.fpn", "backbone.fpn.bottom_up", "backbone.refine",
           "proposal_generator", "roi_heads", "head")  # fmt: skip


def _hook_times(model) -> Dict[str, List[float]]:
    """Forward hooks that append each listed module's seconds per call to the returned dict."""
    times: Dict[str, List[float]] = defaultdict(list)
    named = dict(model.named_modules())
    for name in MODULES:
        if name not in named:
            continue

        def pre(module, args, name=name):
            times[name].append(-time.perf_counter())

        def post(module, args, output, name=name):
            times[name][-1] += time.perf_counter()

        named[name].register_forward_pre_hook(pre)
        named[name].register_forward_hook(post)
    return times


def step_fn(model, batch, phase: str):
    """One inference of the first image (``no_grad``) or one forward and backward of the losses."""
    if phase == "inference":
        image = inference_inputs(batch[:1])

        def run():
            model.eval()
            with torch.no_grad():
                model(image)

    else:

        def run():
            model.train()
            model.zero_grad(set_to_none=True)
            sum(model(batch).values()).backward()

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_pair", description=__doc__.split("\n")[0])
    p.add_argument("--family", choices=["rcnn", "retinanet"], default="rcnn")
    p.add_argument("--phase", choices=["inference", "train"], default="inference")
    p.add_argument("--repeats", type=int, default=6, help="timed calls per model, after one warm-up")
    p.add_argument("--top", type=int, default=15, help="operators listed per model")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from torch.profiler import ProfilerActivity, profile
    from detectron2.utils.events import EventStorage

    (pair,) = [p for p in PAIRS if p.suite == "COCO size" and p.family == args.family]
    names = (pair.baseline_name, pair.libra_name)
    models, batch = build_pair(pair)
    hooks = [_hook_times(m) for m in models]
    runs = [step_fn(m, batch, args.phase) for m in models]
    totals: List[List[float]] = [[], []]
    with EventStorage(0):
        for r in range(args.repeats + 1):
            for i in (0, 1) if r % 2 == 0 else (1, 0):
                start = time.perf_counter()
                runs[i]()
                if r:
                    totals[i].append(time.perf_counter() - start)
        print(f"{args.phase}, median of {args.repeats} after 1 warm-up, seconds:")
        for i, name in enumerate(names):
            modules = ", ".join(f"{k} {statistics.median(v[1:]):.3f}" for k, v in hooks[i].items() if len(v) > 1)
            print(f"  {name}: {statistics.median(totals[i]):.3f} ({modules})")
        per_op = []
        for i, name in enumerate(names):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                runs[i]()
            averages = prof.key_averages()
            per_op.append({e.key: e.self_cpu_time_total / 1e6 for e in averages})
            print(f"\n{name}, one call, operators by self CPU time:")
            print(averages.table(sort_by="self_cpu_time_total", row_limit=args.top))
    diff = sorted(set(per_op[0]) | set(per_op[1]), key=lambda k: -abs(per_op[1].get(k, 0) - per_op[0].get(k, 0)))
    print(f"operators whose self CPU time differs most, {names[1]} minus {names[0]}, seconds:")
    for key in diff[: args.top]:
        print(f"  {key}: {per_op[1].get(key, 0.0) - per_op[0].get(key, 0.0):+.3f} "
              f"({per_op[0].get(key, 0.0):.3f} -> {per_op[1].get(key, 0.0):.3f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
