"""Which imbalance a dataset has: the diagnosis a study writes beside its table (docs/own_data.md, step 5).

Three pictures, each with one sentence on what it means for the component it concerns:

- the data (no model needed): class frequencies, objects per image, and box sizes against COCO's
  small / medium / large areas (:func:`data_statistics`);
- the sample level (Libra R-CNN Fig. 3): the IoU of the negatives that random and IoU-balanced
  sampling draw, of the hard ones, and of all candidates, from a trained model's proposals
  (:func:`libra_rcnn.analysis.iou_histograms.negative_ious`);
- the objective level (Fig. 5): the inliers' share of the box gradient under the baseline's loss
  and under balanced L1, on trained models (:func:`libra_rcnn.analysis.inlier_gradients.run_shares`).

The last two need trained weights: the study's own runs (its baseline and balanced L1 rows), or
``MODEL.WEIGHTS`` of the config given to ``--diagnose``.
"""
import argparse
import json
import math
import os
from collections import Counter
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import BoxMode

from ..analysis import save_figure
from ..analysis.inlier_gradients import run_shares
from ..analysis.iou_histograms import draw_iou_histograms, hard_share, negative_ious
from ..config import build_config
from ..io import atomic_open
from ..modeling.roi_heads import build_roi_sampler

__all__ = ["COCO_AREAS", "data_statistics", "diagnose"]

# COCO's area ranges of APs, APm, APl, in square pixels of the original image.
COCO_AREAS = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, math.inf)}
# At most this many training images go through a model for the IoU and gradient pictures.
MAX_IMAGES = 200
# With random sampling, at least this share of the negatives hard (IoU >= 0.05) leaves IoU-balanced
# sampling little to change; the paper measured under 30 % on COCO.
FEW_HARD = 0.5


def data_statistics(records: Sequence[dict], class_names: Sequence[str]) -> dict:
    """Class frequencies, objects per image and box areas of Detectron2 dataset dicts (crowd
    regions left out), with the sentences the pictures carry."""
    classes, per_image, areas = Counter(), [], []
    for record in records:
        annotations = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
        per_image.append(len(annotations))
        for ann in annotations:
            classes[class_names[ann["category_id"]]] += 1
            x0, y0, x1, y1 = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
            areas.append(max(x1 - x0, 0) * max(y1 - y0, 0))
    counts = {name: classes.get(name, 0) for name in class_names}
    shares = {size: float(np.mean([lo <= a < hi for a in areas])) if areas else math.nan
              for size, (lo, hi) in COCO_AREAS.items()}  # fmt: skip
    rarest, commonest = min(counts.values()), max(counts.values())
    ratio = commonest / max(rarest, 1)
    median = float(np.median(per_image)) if per_image else 0.0
    spread = sum(share >= 0.1 for share in shares.values())
    return {
        "images": len(records),
        "boxes": len(areas),
        "class_counts": counts,
        "objects_per_image": per_image,
        "area_shares": shares,
        "sentences": {
            "classes": (f"the most frequent class has {ratio:.1f}x the boxes of the rarest: a class imbalance, which "
                        "none of Libra R-CNN's components addresses (they balance samples, features and the loss)"
                        if ratio >= 3 else f"classes within {ratio:.1f}x of each other: little class imbalance"),
            "objects": (f"a median of {median:g} objects per image: instance-balanced positives spread the positives "
                        "over them" if median >= 4 else f"a median of {median:g} objects per image: instance-balanced "
                        "positives have few objects to balance"),
            "sizes": (f"boxes of {spread} COCO size ranges ({', '.join(f'{k} {100 * v:.0f} %' for k, v in shares.items())}): "
                      + ("the balanced feature pyramid mixes the levels they are detected at" if spread >= 2 else
                         "one size range: the balanced feature pyramid has few levels to balance")),
        },
    }  # fmt: skip


def _draw_data(stats: dict, output: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    names = list(stats["class_counts"])
    axes[0].bar(range(len(names)), [stats["class_counts"][n] for n in names], color="#2b6cb0")
    axes[0].set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    axes[0].set(title="GT boxes per class", ylabel="boxes")
    counts = stats["objects_per_image"]
    axes[1].hist(counts, bins=range(0, max(counts or [0]) + 2), color="#2b6cb0", edgecolor="white")
    axes[1].set(title="objects per image", xlabel="GT boxes (crowd regions left out)", ylabel="images")
    sizes = list(stats["area_shares"])
    axes[2].bar(sizes, [100 * stats["area_shares"][s] for s in sizes], color="#2b6cb0")
    axes[2].set(title="box sizes, COCO's area ranges", ylabel="share of the boxes (%)")
    for ax, key in zip(axes, ("classes", "objects", "sizes")):
        ax.set_xlabel(ax.get_xlabel() + ("\n" if ax.get_xlabel() else "") + _wrap(stats["sentences"][key]), fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{stats['images']} training images, {stats['boxes']} GT boxes", fontsize=10)
    return save_figure(fig, output)


def _wrap(text: str, width: int = 60) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def _iou_sentence(shares: Dict[str, float]) -> str:
    random, balanced, hard = shares["random"], shares["iou_balanced"], shares["hard"]
    counts = (f"{100 * hard:.0f} % of all negative candidates are hard (IoU >= 0.05); random sampling draws "
              f"{100 * random:.0f} % hard negatives, IoU-balanced sampling {100 * balanced:.0f} %")  # fmt: skip
    if random >= FEW_HARD:
        return f"{counts}: random sampling already draws mostly hard ones, IoU-balanced sampling has little to rebalance"
    return f"{counts}: IoU-balanced sampling moves the sampled negatives toward the hard ones"


def _gradient_sentence(baseline: dict, balanced: dict) -> str:
    before, after = baseline["smooth_l1_grad_share"], balanced["balanced_l1_grad_share"]
    verb = "raises" if after > before else "does not raise"
    return (f"inliers (RoIs whose smooth L1 loss, beta 1, is below 1) give {100 * before:.0f} % of the box "
            f"gradient under the baseline's loss and {100 * after:.0f} % under balanced L1, measured on the "
            f"trained models of the rows without and with it: balanced L1 {verb} their share, as the paper "
            "intends")  # fmt: skip


def diagnose(cfg: CfgNode, out_dir: str, trained: Optional[Dict[str, str]] = None) -> List[str]:
    """Write the diagnosis of ``cfg``'s training data into ``out_dir``: ``diagnosis.md``,
    ``diagnosis.json`` and the PNGs it shows.

    Args:
        cfg: the study's config (its ``DATASETS.TRAIN[0]``).
        out_dir: the study's folder.
        trained: run folders (``config.yaml``, ``model_final.pth``) of trained models:
            ``"baseline"`` (random sampling, the baseline's loss) and ``"balanced_l1"``; else the
            sample- and objective-level pictures are left out, with a line saying why.

    Returns:
        the sentences, in the order of the pictures.
    """
    os.makedirs(out_dir, exist_ok=True)
    split = cfg.DATASETS.TRAIN[0]
    records = DatasetCatalog.get(split)
    names = MetadataCatalog.get(split).thing_classes
    stats = data_statistics(records, names)
    report = {"split": split, "data": {k: v for k, v in stats.items() if k != "objects_per_image"}}
    lines = [f"# Diagnosis of {split}", "", "![the data](diagnosis_data.png)", ""]
    lines += [f"- {stats['sentences'][k]}." for k in ("classes", "objects", "sizes")]
    sentences = [stats["sentences"][k] for k in ("classes", "objects", "sizes")]
    _draw_data(stats, os.path.join(out_dir, "diagnosis_data.png"))
    trained = trained or {}
    subset = records[:MAX_IMAGES]
    if "baseline" in trained:
        run = trained["baseline"]
        model_cfg = build_config(argparse.Namespace(config_file=os.path.join(run, "config.yaml"), opts=[
            "MODEL.WEIGHTS", os.path.join(run, "model_final.pth"),
            "MODEL.RPN.PRE_NMS_TOPK_TEST", str(cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN),
            "MODEL.RPN.POST_NMS_TOPK_TEST", str(cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN)]))  # fmt: skip
        model = build_model(model_cfg)
        DetectionCheckpointer(model).load(model_cfg.MODEL.WEIGHTS)
        ious = negative_ious(model, cfg, subset, seed=0)  # the study's sampler settings draw the IoU-balanced set
        shares = {name: hard_share(values) for name, values in ious.items()}
        bg = build_roi_sampler(cfg, model.roi_heads.proposal_matcher).bg_iou_thresh
        sentence = _iou_sentence(shares)
        draw_iou_histograms(ious, bg, os.path.join(out_dir, "diagnosis_negatives.png"), _wrap(sentence, 110))
        report["negatives"] = {"hard_share": shares, "images": len(subset), "model": run}
        lines += ["", "![negatives](diagnosis_negatives.png)", "", f"- {sentence}."]
        sentences.append(sentence)
    else:
        lines += ["", "- The negatives' IoU (Fig. 3) needs a trained baseline: run the study, or --diagnose a config "
                  "whose MODEL.WEIGHTS is a trained model."]  # fmt: skip
    if "baseline" in trained and "balanced_l1" in trained:
        random_heads = ["MODEL.ROI_HEADS.NAME", "LibraROIHeads", "MODEL.LIBRA.SAMPLER.POS", "random",
                        "MODEL.LIBRA.SAMPLER.NEG", "random"]  # fmt: skip
        baseline = run_shares(trained["baseline"], split, MAX_IMAGES, 0, random_heads)
        balanced = run_shares(trained["balanced_l1"], split, MAX_IMAGES, 0)
        sentence = _gradient_sentence(baseline, balanced)
        _draw_shares(baseline, balanced, os.path.join(out_dir, "diagnosis_gradients.png"), sentence)
        report["gradients"] = {"baseline": baseline, "balanced_l1": balanced}
        lines += ["", "![gradients](diagnosis_gradients.png)", "", f"- {sentence}."]
        sentences.append(sentence)
    with atomic_open(os.path.join(out_dir, "diagnosis.md")) as f:
        f.write("\n".join(lines) + "\n")
    with atomic_open(os.path.join(out_dir, "diagnosis.json")) as f:
        json.dump(report, f, indent=1, default=float)
    return sentences


def _draw_shares(baseline: dict, balanced: dict, output: str, sentence: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labels = ["baseline model,\nits own loss", "balanced L1 model,\nbalanced L1"]
    values = [100 * baseline["smooth_l1_grad_share"], 100 * balanced["balanced_l1_grad_share"]]
    bars = ax.bar(labels, values, color=["tab:gray", "tab:blue"])
    ax.bar_label(bars, fmt="%.0f %%")
    ax.set(ylabel="inliers' share of the box gradient (%)", ylim=(0, 100))
    ax.set_title(_wrap(sentence, 80), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, output)
