"""mmdetection's IoU-balanced samplers on the inputs of :mod:`benchmarks.sampler`.

Run by :func:`benchmarks.sampler.run_reference` in a subprocess whose ``PYTHONPATH`` holds the
optional environment of ``benchmarks/setup_reference_env.sh`` (mmdet 3.3.0, mmengine 0.10.7,
mmcv-lite 2.1.0), never the project's own::

    python -m benchmarks.reference_sampler INPUTS.pt OUT.json --device cpu

Per image, as mmdetection's ``BaseSampler.sample`` does for its ``CombinedSampler`` (the
reference config: ``InstanceBalancedPosSampler`` + ``IoUBalancedNegSampler`` with
``floor_thr=-1, floor_fraction=0, num_bins=3``, 512 RoIs, 25 % positives): positives, their
``unique()``, then negatives for the rest, their ``unique()``. The GT boxes are not added as
proposals and no ``SamplingResult`` is built, so that only the sampling is timed, like ours.
Warm-up calls come first: the negative sampler, built with ``floor_thr=-1``, switches itself to
``floor_thr=0`` at its first call, and is timed in that state (as it runs in training).
"""

import argparse
import json
import sys

import torch

from .reference.env import TorchvisionOps


def load_samplers():
    """mmdetection's ``CombinedSampler`` with the reference's positive and negative samplers."""
    if not isinstance(sys.modules.get("mmcv._ext"), TorchvisionOps):
        sys.modules["mmcv._ext"] = TorchvisionOps()
    from mmdet.models.task_modules.samplers import CombinedSampler

    from .sampler import POSITIVE_FRACTION, ROIS_PER_IMAGE

    return CombinedSampler(
        pos_sampler=dict(type="InstanceBalancedPosSampler"),
        neg_sampler=dict(type="IoUBalancedNegSampler", floor_thr=-1, floor_fraction=0, num_bins=3),
        num=ROIS_PER_IMAGE,
        pos_fraction=POSITIVE_FRACTION,
        add_gt_as_proposals=False,
    )


def assign_results(inputs: dict, device: str) -> list:
    """mmdetection's ``AssignResult`` per image: gt_inds 1-based for positives, 0 for negatives."""
    from mmdet.models.task_modules.assigners import AssignResult

    from .sampler import NUM_CLASSES

    results = []
    for num_gts, classes, matched, max_iou in zip(
        inputs["num_gts"], inputs["gt_classes"], inputs["matched_idxs"], inputs["max_iou"]
    ):
        positive = classes < NUM_CLASSES
        gt_inds = torch.where(positive, matched + 1, torch.zeros_like(matched))
        labels = torch.where(positive, classes, torch.full_like(classes, -1))
        results.append(AssignResult(num_gts, gt_inds.to(device), max_iou.to(device), labels.to(device)))
    return results


def sample_batch(sampler, assigned: list) -> list:
    """The sampled (positive, negative) indices of every image, as ``BaseSampler.sample``."""
    out = []
    for result in assigned:
        num_pos = int(sampler.num * sampler.pos_fraction)
        pos = sampler.pos_sampler._sample_pos(result, num_pos).unique()
        neg = sampler.neg_sampler._sample_neg(result, sampler.num - pos.numel()).unique()
        out.append((pos, neg))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", help="inputs saved by benchmarks.sampler (torch.save)")
    parser.add_argument("out", help="JSON file to write")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import mmcv
    import mmdet
    import mmengine

    from .sampler import measure

    sampler = load_samplers()
    inputs = torch.load(args.inputs)
    assigned = assign_results(inputs, args.device)
    result = measure(lambda: sample_batch(sampler, assigned), args.device, args.warmup, args.repeats)
    result["floor_thr_when_timed"] = sampler.neg_sampler.floor_thr
    versions = {"mmdet": mmdet.__version__, "mmengine": mmengine.__version__, "mmcv": mmcv.__version__}
    with open(args.out, "w") as f:
        json.dump({"versions": versions, "result": result}, f)


if __name__ == "__main__":
    main()
