"""Where the detections of a compared run differ, and why: measured, not guessed.

    .venv/bin/python -m benchmarks.reference.residuals docs/results/reference/retinanet_R_18_FPN_GN/seed_7 \
        --clip-before-nms

After :mod:`benchmarks.reference.compare`, for one run: the detections that are identical in both
frameworks (same image and class, every box coordinate within 0.01 px), and for those only one
side has, how many lie at the image's 100-detection cut (score within 1e-3 of the image's 100th)
and how many touch the image border. ``--clip-before-nms`` evaluates the converted model again
with Detectron2's dense-detector boxes clipped to the image and the empty ones dropped before NMS,
as mmdetection's ``DeltaXYWHBBoxCoder(clip_border=True)`` and ``test_cfg.min_bbox_size=0`` do
(Detectron2 does both after NMS), and reports the same for those detections. Writes ``RUN/residuals.json``.
"""
import argparse
import contextlib
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import DenseDetector

from .compare import DATASET

IDENTICAL_PX = 0.01
AT_CUT = 1e-3


def identity(theirs: List[dict], ours: List[dict], sizes: Dict[int, tuple], per_image: int = 100) -> dict:
    """Pair identical detections (same image, class and box within ``IDENTICAL_PX``); describe the rest.

    Returns:
        counts of identical pairs and of each side's remaining detections, their highest score,
        how many are at their image's ``per_image`` cut, and how many touch the image border
        (``sizes``: image id -> (width, height)).
    """
    groups = defaultdict(lambda: ([], []))
    for side, dets in enumerate((theirs, ours)):
        for d in dets:
            groups[(d["image_id"], d["category_id"])][side].append(d)
    identical, rest = 0, ([], [])
    for a, b in groups.values():
        free = list(b)
        for d in a:
            hit = next((e for e in free if max(abs(p - q) for p, q in zip(d["bbox"], e["bbox"])) < IDENTICAL_PX), None)
            if hit is None:
                rest[0].append(d)
            else:
                free.remove(hit)
                identical += 1
        rest[1].extend(free)

    def cut(dets):
        scores = defaultdict(list)
        for d in dets:
            scores[d["image_id"]].append(d["score"])
        return {i: sorted(s)[-per_image] if len(s) >= per_image else 0.0 for i, s in scores.items()}

    def border(d):
        x, y, w, h = d["bbox"]
        width, height = sizes[d["image_id"]]
        return x <= 0.5 or y <= 0.5 or x + w >= width - 0.5 or y + h >= height - 0.5

    report = {"identical": identical, "mmdetection": len(theirs), "detectron2": len(ours)}
    for name, dets, odd in (("mmdetection", theirs, rest[0]), ("detectron2", ours, rest[1])):
        cuts = cut(dets)
        report[f"only_{name}"] = {
            "count": len(odd),
            "highest_score": max((d["score"] for d in odd), default=None),
            "at_the_cut": sum(d["score"] - cuts[d["image_id"]] < AT_CUT for d in odd),
            "at_the_border": sum(map(border, odd)),
            "share_of_all_at_the_border": round(sum(map(border, dets)) / max(len(dets), 1), 3),
        }
    return report


@contextlib.contextmanager
def clip_before_nms():
    """Detectron2's dense detectors as mmdetection's: each level's decoded boxes clipped to the image
    and the empty ones dropped before NMS (``clip_border=True``, ``min_bbox_size=0``). Detectron2
    clips after NMS and drops empty boxes after its per-image cut, which then holds fewer."""
    original = DenseDetector._decode_per_level_predictions

    def clipped(self, anchors, pred_scores, pred_deltas, score_thresh, topk_candidates, image_size):
        instances = original(self, anchors, pred_scores, pred_deltas, score_thresh, topk_candidates, image_size)
        instances.pred_boxes.clip(image_size)
        return instances[instances.pred_boxes.nonempty()]

    DenseDetector._decode_per_level_predictions = clipped
    try:
        yield
    finally:
        DenseDetector._decode_per_level_predictions = original


def evaluate_clipped(run: Path) -> List[dict]:
    """The converted model's detections on the val split, boxes clipped before NMS."""
    from libra_rcnn.config import build_config

    args = argparse.Namespace(config_file=str(run / "converted" / "model.yaml"), opts=["MODEL.DEVICE", "cpu"],
                              eval_only=True)  # fmt: skip
    cfg = build_config(args)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    with tempfile.TemporaryDirectory() as out, clip_before_nms():
        evaluator = COCOEvaluator(DATASET, output_dir=out)
        inference_on_dataset(model, build_detection_test_loader(cfg, DATASET), evaluator)
        with open(os.path.join(out, "coco_instances_results.json")) as f:
            return json.load(f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reference.residuals", description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run folder that benchmarks.reference.compare has compared")
    parser.add_argument("--clip-before-nms", action="store_true", help="also evaluate with boxes clipped before NMS")
    parser.add_argument("--datasets", default=os.environ.get("DETECTRON2_DATASETS", "datasets"))
    args = parser.parse_args(argv)
    os.environ["DETECTRON2_DATASETS"] = args.datasets
    import libra_rcnn  # noqa: F401  (registers FashionScenes under DETECTRON2_DATASETS)

    run = Path(args.run)
    theirs = json.loads((run / "detections.bbox.json").read_text())
    ours_file = run / "converted" / "eval" / "inference" / DATASET / "coco_instances_results.json"
    ours = json.loads(ours_file.read_text())
    annotations = Path(args.datasets) / "fashion_scenes" / "annotations" / "instances_val.json"
    sizes = {i["id"]: (i["width"], i["height"]) for i in json.loads(annotations.read_text())["images"]}
    report = {"as_evaluated": identity(theirs, ours, sizes)}
    if args.clip_before_nms:
        report["clipped_before_nms"] = identity(theirs, evaluate_clipped(run), sizes)
    (run / "residuals.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
