"""One reference run: an mmdetection 3.3 config trained on FashionScenes, then evaluated.

    .venv/bin/python -m benchmarks.reference.train benchmarks/reference/configs/libra_rcnn_R_18_FPN_GN.py \\
        --out docs/results/reference/libra_rcnn_R_18_FPN_GN/seed_7 --seed 7

mmengine's ``Runner`` trains with the config's schedule, writing a checkpoint every 250
iterations into ``--out``. Run again with the same arguments, the command resumes from the
newest checkpoint, and once ``result.json`` exists it only prints it. After training, the
model is evaluated by mmdetection's ``CocoMetric`` on the test split, whose detections are
kept (``detections.bbox.json``), and the six COCO numbers are recomputed from them at full
precision with pycocotools (``CocoMetric`` rounds to 0.1 AP).

Written into ``--out``: ``result.json`` (AP, AP50, AP75, APs, APm, APl at full precision and
as ``CocoMetric`` printed them; seconds; versions; CPU), ``detections.bbox.json``,
``scalars.json`` (mmengine's logged losses and learning rate, one line per logged iteration,
over every resumed part), ``log.txt`` (which prints the resolved config), and, git-ignored, the
checkpoints (``iter_*.pth``) and mmengine's copy of the config.

The dataset root is ``$FASHION_SCENES`` (default ``datasets/fashion_scenes``, built by
``python -m libra_rcnn.data``).
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List

from .env import use_reference_env

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_stats(annotation_file: str, detections_file: str) -> Dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl (percent, unrounded) of a COCO results file, by pycocotools.

    Raises:
        FileNotFoundError: for a missing file.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(annotation_file)
    detections = json.loads(Path(detections_file).read_text())
    if not detections:
        return {k: 0.0 for k in METRICS}
    evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {k: 100.0 * float(v) for k, v in zip(METRICS, evaluator.stats[:6])}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def merge_logs(out: Path) -> None:
    """Collect mmengine's per-process logs (one timestamped folder per start) into ``out``.

    ``scalars.json`` holds each logged iteration once, from the newest part that logged it
    (a resumed part logs again what came after its checkpoint); ``log.txt`` is the parts'
    logs, oldest first.
    """
    parts = sorted(p for p in out.iterdir() if p.is_dir() and (p / "vis_data").is_dir())
    by_step: Dict[int, str] = {}
    logs: List[str] = []
    for part in parts:
        scalars = part / "vis_data" / "scalars.json"
        if scalars.is_file():
            for line in scalars.read_text().splitlines():
                try:
                    by_step[int(json.loads(line)["step"])] = line
                except (ValueError, KeyError):
                    continue  # a torn last line of a killed part
        logs += [p.read_text() for p in sorted(part.glob("*.log"))]
    (out / "scalars.json").write_text("".join(by_step[k] + "\n" for k in sorted(by_step)))
    (out / "log.txt").write_text("".join(logs))


def shorten(cfg, max_iters: int) -> None:
    """Set the schedule of ``cfg`` to ``max_iters`` iterations (cosine to the end; warm-up,
    checkpoint and logging periods clipped to it), for short runs such as the tests'."""
    cfg.train_cfg.max_iters = max_iters
    cfg.train_cfg.val_interval = max_iters + 1
    warmup, cosine = cfg.param_scheduler
    warmup.end = min(warmup.end, max_iters)
    cosine.T_max = cosine.end = max_iters
    checkpoint = cfg.default_hooks.checkpoint
    checkpoint.interval = min(checkpoint.interval, max_iters)
    cfg.default_hooks.logger.interval = min(cfg.default_hooks.logger.interval, max_iters)


def run(config: str, out: Path, seed: int, max_iters: int = 0) -> dict:
    """Train (or resume) ``config`` into ``out`` at ``seed``, evaluate, write ``result.json``.

    ``max_iters`` > 0 replaces the config's schedule length (:func:`shorten`).
    """
    result_file = out / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    use_reference_env(resume_own_checkpoints=True)
    import mmcv
    import mmdet
    import mmengine
    import torch
    from mmengine.config import Config
    from mmengine.runner import Runner

    out.mkdir(parents=True, exist_ok=True)
    cfg = Config.fromfile(config)
    cfg.work_dir = str(out)
    cfg.randomness = dict(seed=seed)
    if max_iters > 0:
        shorten(cfg, max_iters)
    cfg.resume = (out / "last_checkpoint").is_file()
    cfg.test_evaluator.outfile_prefix = str(out / "detections")
    runner = Runner.from_cfg(cfg)
    start_iter = None
    t0 = time.perf_counter()
    runner.train()
    train_seconds = time.perf_counter() - t0
    start_iter = runner.train_loop.iter
    t0 = time.perf_counter()
    printed = runner.test()
    eval_seconds = time.perf_counter() - t0
    merge_logs(out)
    stats = coco_stats(cfg.test_evaluator.ann_file, str(out / "detections.bbox.json"))
    names = dict(zip(METRICS, ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l")))
    result = {
        "config": config,
        "seed": seed,
        "framework": "mmdetection",
        "box_ap": stats,
        # CocoMetric prints nothing when there are no detections.
        "cocometric_printed": {k: 100.0 * printed[f"coco/{v}"] if f"coco/{v}" in printed else None
                               for k, v in names.items()},
        "max_iter": cfg.train_cfg.max_iters,
        "final_iter": start_iter,
        "train_seconds_last_part": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "versions": {"mmdet": mmdet.__version__, "mmengine": mmengine.__version__, "mmcv": mmcv.__version__,
                     "torch": torch.__version__, "python": platform.python_version()},
        "cpu": f"{cpu_name()}, {os.cpu_count()} cores",
    }  # fmt: skip
    tmp = result_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, result_file)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reference.train", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="mmengine config (benchmarks/reference/configs/*.py)")
    parser.add_argument("--out", required=True, help="run folder (resumed when it holds a checkpoint)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-iters", type=int, default=0, help="shorter schedule (0: the config's)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.config):
        print(f"error: config {args.config} not found", file=sys.stderr)
        return 2
    result = run(args.config, Path(args.out), args.seed, args.max_iters)
    ap = result["box_ap"]
    print(f"{args.config} seed {args.seed}: " + ", ".join(f"{k} {ap[k]:.2f}" for k in METRICS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
