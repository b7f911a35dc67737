"""Fig. 5 of Libra R-CNN on trained models: the inliers' share of the box gradient, one rule.

    python -m libra_rcnn.analysis.inlier_gradients --runs RUN_DIR [RUN_DIR ...] [--labels ...]
        [--split fashion_scenes_train] [--max-images 64] [--seed 0] [--out shares.json]

Each ``RUN_DIR`` is a training output folder (``config.yaml`` and ``model_final.pth``, as
``train_net.py`` and the ablation runner write them). For each run the model is put in
training mode, without gradients, and fed the split's images at test-time size with their
annotations: the RPN proposes, the RoI heads sample RoIs as in training, and the box
predictor's residuals x = predicted - GT box deltas of the foreground RoIs are collected
(:meth:`LibraFastRCNNOutputLayers.box_residuals`). On these residuals
:func:`libra_rcnn.modeling.imbalance.fixed_rule_gradient_shares` counts as inliers the RoIs whose
smooth L1 loss (beta 1, the paper's baseline) is below 1 and gives the inliers' share of the
gradient under smooth L1 and under balanced L1 (the run's ``MODEL.LIBRA.BALANCED_L1``).

Unlike the training statistic ``box_reg/inlier_grad_share``, which counts inliers by each
run's own loss, this compares the two losses on the same RoIs with the same rule, and
separately compares models trained with either loss. Same ``--seed`` and split, same images
and draws for every run. Prints one line per run and writes the figures as JSON.
"""
import argparse
import dataclasses
import json
import os
import sys
from typing import List, Optional, Sequence

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ..config import EXIT_BAD_INPUT, InputError, build_config
from ..modeling.balanced_l1 import BalancedL1Options
from ..modeling.box_predictor import LibraFastRCNNOutputLayers
from ..modeling.imbalance import fixed_rule_gradient_shares
from . import annotated_loader

__all__ = ["foreground_residuals", "run_shares", "main"]

PROG = "python -m libra_rcnn.analysis.inlier_gradients"


@torch.no_grad()
def foreground_residuals(model, cfg, dataset_dicts: Sequence[dict], seed: int = 0) -> torch.Tensor:
    """Box-delta residuals of the foreground RoIs the model samples on ``dataset_dicts``.

    Args:
        model: a Detectron2 ``GeneralizedRCNN`` with :class:`LibraFastRCNNOutputLayers` as its
            box predictor, weights loaded; set to training mode here (no gradients).
        cfg: its config (``INPUT`` sizes for test-time resizing).
        dataset_dicts: dataset dicts with annotations, fed one image per batch in order.
        seed: seeds the RoI sampling (``torch.manual_seed``).

    Returns:
        float32 (R, 4) CPU tensor: x = predicted - GT box deltas of every sampled foreground
        RoI over all images (``Box2BoxTransform`` units).

    Raises:
        ValueError: when the model has no :class:`LibraFastRCNNOutputLayers` box predictor.
    """
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    if not isinstance(predictor, LibraFastRCNNOutputLayers):
        raise ValueError(
            f"the model's box predictor is {type(predictor).__name__}, not LibraFastRCNNOutputLayers: "
            "set MODEL.ROI_HEADS.NAME to LibraROIHeads"
        )
    heads = model.roi_heads
    found: List[torch.Tensor] = []
    loader = annotated_loader(cfg, dataset_dicts)
    torch.manual_seed(seed)
    was_training = model.training
    try:
        model.train()  # the RPN and the RoI heads sample as in training
        with EventStorage(0):
            for batch in loader:
                images = model.preprocess_image(batch)
                features = model.backbone(images.tensor)
                targets = [x["instances"].to(model.device) for x in batch]
                proposals, _ = model.proposal_generator(images, features, targets)
                proposals = heads.label_and_sample_proposals(proposals, targets)
                pooled = heads.box_pooler([features[f] for f in heads.box_in_features], [p.proposal_boxes for p in proposals])
                _, pred_deltas = predictor(heads.box_head(pooled))
                foreground, residual = predictor.box_residuals(pred_deltas, proposals)
                found.append(residual[foreground].cpu())
    finally:
        model.train(was_training)
    return torch.cat(found) if found else torch.zeros(0, 4)


def run_shares(run_dir: str, split: Optional[str], max_images: int, seed: int, opts: Sequence[str] = ()) -> dict:
    """:func:`fixed_rule_gradient_shares` of one run folder's ``model_final.pth``.

    ``opts`` are ``KEY VALUE`` overrides of the run's config: a model trained with Detectron2's
    ``StandardROIHeads`` (the baseline) is read with ``LibraROIHeads`` and random sampling
    (``MODEL.ROI_HEADS.NAME LibraROIHeads MODEL.LIBRA.SAMPLER.POS random ...NEG random``), the
    same parameters and draws, which give its residuals.

    Returns:
        Its dict plus ``run``, ``split``, ``images``, ``smooth_l1_beta`` (1.0, the inlier
        rule's and smooth L1's) and ``balanced_l1`` (the run's parameters).

    Raises:
        InputError: for a folder without ``config.yaml`` or ``model_final.pth``, or an
            unregistered split; ValueError for a model without LibraROIHeads.
    """
    config, weights = os.path.join(run_dir, "config.yaml"), os.path.join(run_dir, "model_final.pth")
    for path in (config, weights):
        if not os.path.isfile(path):
            raise InputError(f"{path} not found: --runs takes training output folders with config.yaml and model_final.pth")
    cfg = build_config(argparse.Namespace(config_file=config, opts=["MODEL.WEIGHTS", weights, *opts]))
    split = split or cfg.DATASETS.TRAIN[0]
    if split not in DatasetCatalog.list():
        raise InputError(f"dataset {split!r} (--split) is not registered in DatasetCatalog")
    dataset_dicts = DatasetCatalog.get(split)[:max_images] if max_images else DatasetCatalog.get(split)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    residual = foreground_residuals(model, cfg, dataset_dicts, seed)
    options = BalancedL1Options.from_config(cfg.MODEL.LIBRA.BALANCED_L1, "MODEL.LIBRA.BALANCED_L1")
    beta = 1.0  # the paper's baseline RoI head: smooth L1 at beta 1 (docs/methods.md#balanced-l1-loss)
    shares = fixed_rule_gradient_shares(residual, beta, options)
    return {"run": run_dir, "split": split, "images": len(dataset_dicts), "smooth_l1_beta": beta,
            "balanced_l1": dataclasses.asdict(options), **shares}  # fmt: skip


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Inliers' share of the box gradient, one rule for both losses.")
    parser.add_argument("--runs", nargs="+", required=True, help="training output folders")
    parser.add_argument("--labels", nargs="*", default=None, help="a name per run (default: its folder)")
    parser.add_argument("--split", default=None, help="registered dataset (default: the run's first DATASETS.TRAIN)")
    parser.add_argument("--max-images", type=int, default=64, help="use the first N images (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the RoI sampling")
    parser.add_argument("--out", default=None, help="JSON path for the figures")
    args = parser.parse_args(argv)
    labels = args.labels or list(args.runs)
    results = []
    try:
        if len(labels) != len(args.runs):
            raise InputError(f"--labels has {len(labels)} names for {len(args.runs)} --runs folders")
        if args.max_images < 0:
            raise InputError(f"--max-images = {args.max_images} must be >= 0")
        for label, run in zip(labels, args.runs):
            result = {"label": label, **run_shares(run, args.split, args.max_images, args.seed)}
            results.append(result)
            print(
                f"{label}: {int(result['rois'])} foreground RoIs on {result['images']} images, "
                f"{result['inlier_share']:.3f} inliers (smooth L1 beta 1 < 1); their gradient share: "
                f"smooth L1 {result['smooth_l1_grad_share']:.3f}, balanced L1 {result['balanced_l1_grad_share']:.3f} "
                f"(by balanced L1's own loss < 1: {result['balanced_l1_own_inlier_share']:.3f} inliers, "
                f"{result['balanced_l1_own_grad_share']:.3f} of the gradient)"
            )
    except (InputError, ValueError, KeyError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
