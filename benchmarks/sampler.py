"""RoI sampling: the project's sampler vs Detectron2's random sampler vs mmdetection's.

Only the sampling is timed, given each proposal's matched GT box, label and maximum IoU (the
matching is the same for all three and is done once, beforehand): 512 RoIs per image, 25 %
positives, from 2000 proposals and 1–100 GT boxes per image.

- ours: :class:`libra_rcnn.BalancedRoISampler` (instance-balanced positives, IoU-balanced
  negatives, K = 3), one call for the whole batch with the inputs ``LibraROIHeads`` gives it;
  with the paper's bins (the default) and with mmdetection's (``BINNING: mmdet``).
- Detectron2: ``subsample_labels`` once per image, as ``StandardROIHeads`` does.
- mmdetection 3.x: ``InstanceBalancedPosSampler`` + ``IoUBalancedNegSampler`` once per image,
  as its ``BaseSampler.sample`` calls them (see :mod:`benchmarks.reference_sampler`), in the
  optional environment made by ``benchmarks/setup_reference_env.sh``.

On a GPU each sampler's host-device synchronisations per call are counted with
``torch.cuda.set_sync_debug_mode("warn")``.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from .common import median, repeat_timed

REPO = Path(__file__).resolve().parents[1]
REFERENCE_ENV = REPO / ".venv-bench" / "site-packages"

PROPOSALS_PER_IMAGE = 2000
MAX_GTS = 100
ROIS_PER_IMAGE = 512
POSITIVE_FRACTION = 0.25
NUM_CLASSES = 80
IMAGE_HW = (800, 1333)


def make_inputs(num_images: int, seed: int) -> dict:
    """Matched proposals of ``num_images`` images, on the CPU, from ``seed``.

    Per image: 1–100 GT boxes (uniform count), 10–400 px sides, anywhere in an 800 x 1333
    image, classes in [0, 80); 2000 proposals (XYXY_ABS pixels), half of them GT boxes
    jittered in position and scale (so their IoU spans 0..1), half anywhere; matched by
    Detectron2's ``Matcher`` at IoU 0.5 (``MODEL.ROI_HEADS.IOU_THRESHOLDS``).

    Returns:
        dict of lists, one entry per image: ``num_gts`` (int), ``gt_classes`` (int64 (N,):
        class, 80 for background), ``matched_idxs`` (int64 (N,)), ``max_iou`` (float32 (N,)).
    """
    from detectron2.modeling.matcher import Matcher
    from detectron2.structures import Boxes, pairwise_iou

    g = torch.Generator().manual_seed(seed)
    matcher = Matcher([0.5], [0, 1], allow_low_quality_matches=False)
    h, w = IMAGE_HW
    out = {"num_gts": [], "gt_classes": [], "matched_idxs": [], "max_iou": []}
    for _ in range(num_images):
        num_gts = int(torch.randint(1, MAX_GTS + 1, (1,), generator=g))
        size = 10 + 390 * torch.rand(num_gts, 2, generator=g)
        center = torch.rand(num_gts, 2, generator=g) * torch.tensor([w, h])
        gt = torch.cat([center - size / 2, center + size / 2], 1)
        n_jitter = PROPOSALS_PER_IMAGE // 2
        which = torch.randint(0, num_gts, (n_jitter,), generator=g)
        jsize = size[which] * torch.exp(0.4 * torch.randn(n_jitter, 2, generator=g))
        jcenter = center[which] + 0.4 * size[which] * torch.randn(n_jitter, 2, generator=g)
        n_free = PROPOSALS_PER_IMAGE - n_jitter
        fsize = 10 + 390 * torch.rand(n_free, 2, generator=g)
        fcenter = torch.rand(n_free, 2, generator=g) * torch.tensor([w, h])
        psize, pcenter = torch.cat([jsize, fsize]), torch.cat([jcenter, fcenter])
        proposals = Boxes(torch.cat([pcenter - psize / 2, pcenter + psize / 2], 1))
        proposals.clip(IMAGE_HW)
        iou = pairwise_iou(Boxes(gt), proposals)
        matched_idxs, matched_labels = matcher(iou)
        classes = torch.randint(0, NUM_CLASSES, (num_gts,), generator=g)[matched_idxs]
        classes[matched_labels == 0] = NUM_CLASSES
        out["num_gts"].append(num_gts)
        out["gt_classes"].append(classes)
        out["matched_idxs"].append(matched_idxs)
        out["max_iou"].append(iou.max(dim=0).values)
    return out


def batch_inputs(inputs: dict, device: str) -> dict:
    """The flattened inputs of :class:`libra_rcnn.BalancedRoISampler` for the whole batch."""
    offsets = torch.tensor([0] + inputs["num_gts"][:-1]).cumsum(0).tolist()
    return {
        "gt_classes": torch.cat(inputs["gt_classes"]).to(device),
        "max_iou": torch.cat(inputs["max_iou"]).to(device),
        "gt_index": torch.cat([m + o for m, o in zip(inputs["matched_idxs"], offsets)]).to(device),
        "image_index": torch.cat([torch.full_like(m, i) for i, m in enumerate(inputs["matched_idxs"])]).to(device),
        "num_images": len(inputs["num_gts"]),
        "num_gts": sum(inputs["num_gts"]),
        "num_classes": NUM_CLASSES,
    }


def ours(binning: str, inputs: dict, device: str) -> Callable[[], object]:
    """One call of the project's sampler on the whole batch."""
    from libra_rcnn import BalancedRoISampler

    sampler = BalancedRoISampler(ROIS_PER_IMAGE, POSITIVE_FRACTION, binning=binning, bg_iou_thresh=0.5)
    args = batch_inputs(inputs, device)
    return lambda: sampler(**args)


def detectron2_random(inputs: dict, device: str) -> Callable[[], object]:
    """Detectron2's ``subsample_labels`` per image, as ``StandardROIHeads._sample_proposals``."""
    from detectron2.modeling.sampling import subsample_labels

    labels = [c.to(device) for c in inputs["gt_classes"]]

    def run():
        return [torch.cat(subsample_labels(c, ROIS_PER_IMAGE, POSITIVE_FRACTION, NUM_CLASSES)) for c in labels]

    return run


def count_syncs(fn: Callable[[], object]) -> int:
    """Host-device synchronisations in one call of ``fn`` (CUDA only): CUDA's sync debug mode."""
    from .host_syncs import cuda_sync_warnings

    return len(cuda_sync_warnings(fn))


def measure(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> dict:
    """Median seconds per call, and the synchronisations of one call on a GPU."""
    times = repeat_timed(fn, device, warmup, repeats)
    result = {"s": median(times), "times_s": [round(t, 6) for t in times]}
    if device.startswith("cuda"):
        result["syncs"] = count_syncs(fn)
    return result


def reference_available() -> bool:
    """Whether the optional mmdetection environment has been installed."""
    return (REFERENCE_ENV / "mmdet").is_dir()


def run_reference(inputs_path: str, device: str, warmup: int, repeats: int, threads: int) -> Optional[dict]:
    """mmdetection's samplers in a subprocess with the optional environment on its path.

    Returns:
        the subprocess's JSON (``{"versions": ..., "result": {...}}``), or None if the
        environment is missing.

    Raises:
        RuntimeError: if the subprocess fails (with its output).
    """
    if not reference_available():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "reference.json")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REFERENCE_ENV), str(REPO)]))
        cmd = [sys.executable, "-m", "benchmarks.reference_sampler", inputs_path, out, "--device", device,
               "--warmup", str(warmup), "--repeats", str(repeats), "--threads", str(threads)]  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
        with open(out) as f:
            return json.load(f)


def measure_samplers(
    batch_sizes: List[int], device: str, warmup: int, repeats: int, seed: int, threads: int, log=print
) -> dict:
    """Every sampler at every batch size on ``device``.

    Returns:
        dict with ``rows`` (one per batch size: median seconds per batch of each sampler,
        the speed-ups of ours over the others, synchronisations on a GPU, mean positive and
        negative candidates per image), ``reference`` (versions, or why it is missing).
    """
    rows = []
    reference_versions: Dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for num_images in batch_sizes:
            log(f"  sampler, batch {num_images} on {device} ...")
            inputs = make_inputs(num_images, seed + num_images)
            row = {"batch": num_images, "device": device}
            row["positives_per_image"] = float(
                sum(((c >= 0) & (c < NUM_CLASSES)).sum() for c in inputs["gt_classes"]) / num_images
            )
            row["gts_per_image"] = sum(inputs["num_gts"]) / num_images
            row["ours_paper"] = measure(ours("paper", inputs, device), device, warmup, repeats)
            row["ours_mmdet"] = measure(ours("mmdet", inputs, device), device, warmup, repeats)
            row["detectron2"] = measure(detectron2_random(inputs, device), device, warmup, repeats)
            path = os.path.join(tmp, f"inputs_{num_images}.pt")
            torch.save(inputs, path)
            reference = run_reference(path, device, warmup, repeats, threads)
            if reference is not None:
                row["mmdet"] = reference["result"]
                reference_versions = reference["versions"]
                row["speedup_vs_mmdet"] = row["mmdet"]["s"] / row["ours_paper"]["s"]
            row["speedup_vs_detectron2"] = row["detectron2"]["s"] / row["ours_paper"]["s"]
            rows.append(row)
    return {
        "rows": rows,
        "reference": reference_versions or {"missing": "not installed: run benchmarks/setup_reference_env.sh"},
    }
