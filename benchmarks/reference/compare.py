"""A reference run's final checkpoint, converted and evaluated by Detectron2, against mmdetection.

    .venv/bin/python -m benchmarks.reference.compare docs/results/reference/libra_rcnn_R_18_FPN_GN/seed_7

For a finished run of :mod:`benchmarks.reference.train`:

1. ``python -m libra_rcnn.convert_mmdet RUN/iter_N.pth RUN/converted/model.pth`` writes the
   weights and their config ``model.yaml`` (from the checkpoint's own config);
2. ``train_net.py --config-file RUN/converted/model.yaml --eval-only`` evaluates them on the same
   split with Detectron2's ``COCOEvaluator``;
3. both detection files are scored by the same pycocotools code (full precision), and the
   detections are matched one to one (same image and class, greedy by score, IoU >= 0.5) to
   give the largest box and score differences of the matched pairs and what stays unmatched.

Writes ``RUN/comparison.json`` and prints a summary. Runs again only what is missing.
"""
import argparse
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import torch
from torchvision.ops import box_iou

from .train import METRICS, coco_stats

REPO = Path(__file__).resolve().parents[2]
DATASET = "fashion_scenes_val"


def _xyxy(boxes: List[List[float]]) -> torch.Tensor:
    t = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], dim=1)


def match_detections(theirs: List[dict], ours: List[dict], iou_threshold: float = 0.5) -> dict:
    """Match two COCO results lists one to one: per image and class, each of ``theirs`` (by
    decreasing score) takes the unmatched one of ``ours`` it overlaps most, if IoU >= the threshold.

    Returns:
        counts, the largest absolute box coordinate difference (pixels) and score difference
        over the matched pairs, and the highest score left unmatched on each side.
    """
    groups: Dict[tuple, List[List[dict]]] = defaultdict(lambda: [[], []])
    for side, dets in enumerate((theirs, ours)):
        for d in dets:
            groups[(d["image_id"], d["category_id"])][side].append(d)
    matched, box_diff, score_diff = 0, 0.0, 0.0
    unmatched_scores: List[List[float]] = [[], []]
    for a, b in groups.values():
        a = sorted(a, key=lambda d: -d["score"])
        used = torch.zeros(len(b), dtype=torch.bool)
        iou = box_iou(_xyxy([d["bbox"] for d in a]), _xyxy([d["bbox"] for d in b])) if a and b else None
        for i, d in enumerate(a):
            if iou is None:
                unmatched_scores[0].append(d["score"])
                continue
            row = iou[i].masked_fill(used, -1.0)
            j = int(row.argmax())
            if float(row[j]) < iou_threshold:
                unmatched_scores[0].append(d["score"])
                continue
            used[j] = True
            matched += 1
            box_diff = max(box_diff, float((_xyxy([d["bbox"]]) - _xyxy([b[j]["bbox"]])).abs().max()))
            score_diff = max(score_diff, abs(d["score"] - b[j]["score"]))
        unmatched_scores[1] += [b[j]["score"] for j in range(len(b)) if not used[j]]
    return {
        "images": len({d["image_id"] for d in theirs} | {d["image_id"] for d in ours}),
        "mmdetection_detections": len(theirs),
        "detectron2_detections": len(ours),
        "matched": matched,
        "max_box_diff_px": box_diff,
        "max_score_diff": score_diff,
        "unmatched_mmdetection": len(unmatched_scores[0]),
        "unmatched_detectron2": len(unmatched_scores[1]),
        "max_unmatched_score_mmdetection": max(unmatched_scores[0], default=None),
        "max_unmatched_score_detectron2": max(unmatched_scores[1], default=None),
    }


def _copypaste(log: str) -> Dict[str, float]:
    """The AP row that Detectron2's ``print_csv_format`` prints (``copypaste: ...``)."""
    rows = re.findall(r"copypaste: ([\d.,nan]+)\s*$", log, flags=re.M)
    if not rows:
        raise RuntimeError("train_net.py printed no AP table:\n" + log[-2000:])
    return {k: float(v) for k, v in zip(METRICS, rows[0].split(","))}


def compare(run: Path, datasets_root: str) -> dict:
    """Convert, evaluate and compare the run in ``run`` (see the module docstring)."""
    result = json.loads((run / "result.json").read_text())
    checkpoint = run / f"iter_{result['max_iter']}.pth"
    converted = run / "converted"
    converted.mkdir(exist_ok=True)
    weights, config = converted / "model.pth", converted / "model.yaml"
    env = dict(os.environ, DETECTRON2_DATASETS=datasets_root, PYTHONWARNINGS="ignore")
    convert = subprocess.run([sys.executable, "-m", "libra_rcnn.convert_mmdet", str(checkpoint), str(weights)],
                             cwd=REPO, env=env, capture_output=True, text=True)  # fmt: skip
    if convert.returncode:
        raise RuntimeError(f"convert_mmdet failed:\n{convert.stderr}")
    out = converted / "eval"
    command = [sys.executable, "train_net.py", "--config-file", str(config), "--eval-only",
               "DATASETS.TEST", f"('{DATASET}',)", "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu"]  # fmt: skip
    evaluation = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    log = evaluation.stdout + evaluation.stderr
    (converted / "eval.log").write_text(log)
    if evaluation.returncode:
        raise RuntimeError(f"train_net.py --eval-only failed:\n{log[-3000:]}")
    printed = _copypaste(log)
    ours_file = out / "inference" / DATASET / "coco_instances_results.json"
    annotations = str(Path(datasets_root) / "fashion_scenes" / "annotations" / "instances_val.json")
    ours = coco_stats(annotations, str(ours_file))
    theirs = result["box_ap"]
    comparison = {
        "run": str(run),
        "command": " ".join(["python train_net.py"] + command[2:]),
        "convert_output": convert.stdout.strip().splitlines(),
        "mmdetection_cocometric": result["cocometric_printed"],
        "mmdetection": theirs,
        "detectron2_printed": printed,
        "detectron2": ours,
        "difference": {k: ours[k] - theirs[k] for k in METRICS},
        "detections": match_detections(json.loads((run / "detections.bbox.json").read_text()),
                                       json.loads(ours_file.read_text())),  # fmt: skip
    }
    (run / "comparison.json").write_text(json.dumps(comparison, indent=1) + "\n")
    return comparison


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reference.compare", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="finished run folders of benchmarks.reference.train")
    parser.add_argument("--datasets", default=os.environ.get("DETECTRON2_DATASETS", "datasets"),
                        help="DETECTRON2_DATASETS root holding fashion_scenes/")  # fmt: skip
    args = parser.parse_args(argv)
    for run in args.runs:
        c = compare(Path(run), args.datasets)
        d = c["detections"]
        print(f"{run}:")
        for name in ("mmdetection", "detectron2", "difference"):
            print(f"  {name:12s} " + "  ".join(f"{k} {c[name][k]:+.3f}" if name == "difference" else f"{k} {c[name][k]:.3f}"
                                               for k in METRICS))  # fmt: skip
        print(f"  detections: {d['matched']} of {d['mmdetection_detections']} / {d['detectron2_detections']} matched; "
              f"largest box difference {d['max_box_diff_px']:.3g} px, score {d['max_score_diff']:.3g}; "
              f"unmatched {d['unmatched_mmdetection']} / {d['unmatched_detectron2']} "
              f"(highest score {d['max_unmatched_score_mmdetection']} / {d['max_unmatched_score_detectron2']})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
