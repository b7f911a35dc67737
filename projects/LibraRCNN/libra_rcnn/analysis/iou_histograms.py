"""Fig. 3 of Libra R-CNN on your data: IoU histograms of random, IoU-balanced and hard negatives.

    python -m libra_rcnn.analysis.iou_histograms --config-file CONFIG --out fig3.png
        [--split fashion_scenes_val] [--max-images N] [--seed 0] MODEL.WEIGHTS model_final.pth [KEY VALUE ...]

For every image of the split (default: the config's first ``DATASETS.TEST``), the model's
backbone and RPN propose boxes as in training (``MODEL.RPN.{PRE,POST}_NMS_TOPK_TRAIN``),
the GT boxes are added as proposals when ``MODEL.ROI_HEADS.PROPOSAL_APPEND_GT`` is set, and
the RoI heads' ``Matcher`` labels them. Three sets of negatives are then drawn from the
same proposals, the same number per image:

- (a) random: Detectron2's ``subsample_labels`` with ``MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE``
  and ``POSITIVE_FRACTION`` (the baseline's RoI sampling);
- (b) IoU-balanced: :class:`BalancedRoISampler` with the config's ``MODEL.LIBRA.SAMPLER`` keys
  (docs/methods.md#iou-balanced-sampling);
- (c) hard: the negatives of highest classification loss (cross-entropy of the model's box
  predictor against background), as OHEM picks them, as many as (a) drew;
- (d) candidates: every proposal labelled background, what the samplers draw from.

The PNG shows, per set, the share of its negatives in IoU bins of width 0.05 over
[0, background threshold), IoU being a proposal's maximum IoU with the image's GT boxes; the
share at IoU >= 0.05 (the paper: random sampling puts over 70 % of its negatives below 0.05,
about 60 % of hard negatives lie above, docs/methods.md#the-three-imbalances) is printed and written on each panel.
Runs in eval mode, without gradients, on ``MODEL.DEVICE``.
"""
import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.modeling.sampling import subsample_labels

from ..config import EXIT_BAD_INPUT, InputError, build_config, check_weights_file
from ..modeling.imbalance import HARD_NEGATIVE_IOU
from ..modeling.roi_heads import build_roi_sampler, label_proposals
from . import annotated_loader, save_figure

__all__ = ["NEGATIVE_SETS", "negative_ious", "iou_histogram", "hard_share", "draw_iou_histograms", "main"]

PROG = "python -m libra_rcnn.analysis.iou_histograms"

NEGATIVE_SETS = ("random", "iou_balanced", "hard", "candidates")
_TITLES = {
    "random": "(a) random sampling",
    "iou_balanced": "(b) IoU-balanced sampling",
    "hard": "(c) hard negatives (top classification loss)",
    "candidates": "(d) every negative candidate",
}
BIN_WIDTH = 0.05


def _check_two_stage(model) -> None:
    heads = getattr(model, "roi_heads", None)
    needed = ("box_pooler", "box_head", "box_predictor", "proposal_matcher")
    has_heads = heads is not None and all(hasattr(heads, n) for n in needed)
    if getattr(model, "proposal_generator", None) is None or not has_heads:
        raise ValueError(
            f"the model ({type(model).__name__}) has no RPN and box RoI heads: IoU histograms need a two-stage "
            "config (MODEL.META_ARCHITECTURE GeneralizedRCNN with StandardROIHeads or LibraROIHeads)"
        )


@torch.no_grad()
def negative_ious(model, cfg, dataset_dicts: Sequence[dict], seed: int = 0) -> Dict[str, torch.Tensor]:
    """Maximum IoUs of the three sets of negatives over ``dataset_dicts``.

    Args:
        model: a two-stage Detectron2 model built from ``cfg`` with its weights loaded; set to
            eval mode here.
        cfg: its config; ``MODEL.ROI_HEADS`` and ``MODEL.LIBRA.SAMPLER`` set the samplers.
            The RPN keeps the model's own top-k (set them before building the model).
        dataset_dicts: Detectron2 dataset dicts with annotations.
        seed: seeds the random draws of (a) and (b).

    Returns:
        ``{"random", "iou_balanced", "hard", "candidates"}`` -> float32 (M,) CPU tensors, the IoU
        of every drawn negative (every candidate for the last) over all images.

    Raises:
        ValueError: for a model without RPN and box RoI heads.
    """
    _check_two_stage(model)
    model.eval()
    heads = model.roi_heads
    sampler = build_roi_sampler(cfg, heads.proposal_matcher)
    torch.manual_seed(seed)  # subsample_labels draws from the default generator
    generator = torch.Generator(device=model.device).manual_seed(seed)
    loader = annotated_loader(cfg, dataset_dicts)
    found: Dict[str, List[torch.Tensor]] = {name: [] for name in NEGATIVE_SETS}
    for batch in loader:
        images = model.preprocess_image(batch)
        targets = [x["instances"].to(model.device) for x in batch]
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        if heads.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)
        levels = [features[f] for f in heads.box_in_features]
        box_features = heads.box_pooler(levels, [p.proposal_boxes for p in proposals])
        scores, _ = heads.box_predictor(heads.box_head(box_features))
        for proposals_i, targets_i, scores_i in zip(proposals, targets, scores.split([len(p) for p in proposals])):
            classes, max_iou, matched = label_proposals(
                heads.proposal_matcher, heads.num_classes, proposals_i.proposal_boxes, targets_i
            )
            _, random_neg = subsample_labels(
                classes, heads.batch_size_per_image, heads.positive_fraction, heads.num_classes
            )
            _, balanced_neg = sampler(
                classes, max_iou, matched, torch.zeros_like(classes), 1, len(targets_i), heads.num_classes, generator
            )
            background = torch.full_like(classes, heads.num_classes)
            loss = F.cross_entropy(scores_i, background, reduction="none")
            loss = torch.where(classes == heads.num_classes, loss, torch.full_like(loss, -float("inf")))
            hard_neg = loss.topk(len(random_neg)).indices
            found["random"].append(max_iou[random_neg])
            found["iou_balanced"].append(max_iou[balanced_neg])
            found["hard"].append(max_iou[hard_neg])
            found["candidates"].append(max_iou[classes == heads.num_classes])
    return {name: torch.cat(v).float().cpu() if v else torch.zeros(0) for name, v in found.items()}


def iou_histogram(ious: torch.Tensor, bg_iou_thresh: float, width: float = BIN_WIDTH):
    """Share of ``ious`` in bins of ``width`` over [0, ``bg_iou_thresh``).

    Returns:
        (edges, shares): float64 numpy arrays of length B + 1 and B; the shares sum to 1 (the
        last bin also takes IoU >= its upper end), all 0 for no IoU.
    """
    edges = np.append(np.arange(0.0, bg_iou_thresh - 1e-9, width), bg_iou_thresh)
    counts, _ = np.histogram(np.clip(ious.numpy(), 0.0, edges[-1] - 1e-9), bins=edges)
    return edges, counts / max(counts.sum(), 1)


def hard_share(ious: torch.Tensor) -> float:
    """Share of ``ious`` at or above :data:`HARD_NEGATIVE_IOU` (0.05); NaN for none."""
    return float((ious >= HARD_NEGATIVE_IOU).double().mean()) if len(ious) else float("nan")


def draw_iou_histograms(ious: Dict[str, torch.Tensor], bg_iou_thresh: float, output: str, title: str) -> str:
    """Draw one panel per set of ``ious`` (:func:`negative_ious`) into a PNG; returns ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ious), figsize=(4.6 * len(ious), 4.2), sharey=True)
    colors = ("tab:gray", "tab:blue", "tab:red", "tab:olive")
    for ax, color, (name, values) in zip(np.atleast_1d(axes), colors, ious.items()):
        edges, shares = iou_histogram(values, bg_iou_thresh)
        ax.bar(edges[:-1], 100 * shares, width=np.diff(edges), align="edge", color=color, edgecolor="white")
        ax.axvline(HARD_NEGATIVE_IOU, color="black", lw=0.8, ls="--")
        ax.text(
            0.97, 0.95, f"IoU >= {HARD_NEGATIVE_IOU:g}: {100 * hard_share(values):.1f} %\n{len(values)} negatives",
            transform=ax.transAxes, ha="right", va="top", fontsize=9,
        )  # fmt: skip
        ax.set(title=_TITLES.get(name, name), xlabel="IoU with the nearest GT box", xlim=(0, bg_iou_thresh))
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("share of the negatives (%)")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, output)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="IoU histograms of random, IoU-balanced and hard negatives (Fig. 3).")
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--out", required=True, help="PNG path")
    parser.add_argument("--split", default=None, help="registered dataset (default: the config's first DATASETS.TEST)")
    parser.add_argument("--max-images", type=int, default=0, help="use the first N images (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, MODEL.WEIGHTS among them")
    args = parser.parse_args(argv)
    try:
        cfg = build_config(args)
        weights = cfg.MODEL.WEIGHTS
        check_weights_file(weights, "MODEL.WEIGHTS", "the analysis of a trained model")
        split = args.split or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
        if split not in DatasetCatalog.list():
            raise InputError(f"dataset {split!r} (--split) is not registered in DatasetCatalog")
        if args.max_images < 0:
            raise InputError(f"--max-images = {args.max_images} must be >= 0")
        cfg.defrost()  # proposals as in training
        cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN
        cfg.freeze()
        model = build_model(cfg)
        _check_two_stage(model)
        dataset_dicts = DatasetCatalog.get(split)
    except (InputError, ValueError, KeyError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.max_images:
        dataset_dicts = dataset_dicts[: args.max_images]
    DetectionCheckpointer(model).load(weights)
    ious = negative_ious(model, cfg, dataset_dicts, seed=args.seed)
    for name, values in ious.items():
        print(f"{name}: {len(values)} negatives, {100 * hard_share(values):.1f} % at IoU >= {HARD_NEGATIVE_IOU:g}")
    config_name = os.path.splitext(os.path.basename(args.config_file))[0]
    s = cfg.MODEL.LIBRA.SAMPLER
    title = (
        f"Negatives of {config_name} ({weights}) on {split}, {len(dataset_dicts)} images\n"
        f"{cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN} proposals and {cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE} RoIs per image; "
        f"IoU-balanced: K = {s.NUM_BINS}, {s.BINNING} binning"
    )
    bg_iou_thresh = build_roi_sampler(cfg, model.roi_heads.proposal_matcher).bg_iou_thresh
    print(draw_iou_histograms(ious, bg_iou_thresh, args.out, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
