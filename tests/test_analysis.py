"""Imbalance statistics (sampling per IoU bin, gradient shares) and the analysis commands."""
import json
import math

import pytest
import torch
from fvcore.nn import smooth_l1_loss

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from libra_rcnn import BalancedL1Options, balanced_l1_loss
from libra_rcnn.analysis import balanced_l1_curves, inlier_gradients, iou_histograms, training_stats
from libra_rcnn.engine import Trainer
from libra_rcnn.modeling.imbalance import (
    NEG_IOU_BIN_NAMES,
    balanced_l1_grad,
    box_reg_loss_and_grad,
    fixed_rule_gradient_shares,
    inlier_gradient_sums,
    negative_iou_counts,
)

from conftest import REPO, TINY, load_cfg

CONFIG = "configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml"
BIN_KEYS = [f"roi_head/num_bg_iou_{n}" for n in NEG_IOU_BIN_NAMES]
B = math.exp(1.5 / 0.5) - 1  # balanced L1's b for alpha 0.5, gamma 1.5


def test_negative_iou_counts_by_hand():
    iou = torch.tensor([0.0, 0.049, 0.05, 0.12, 0.2, 0.35, 0.45, 0.3, 0.01, 0.6])
    neg = torch.tensor([True, True, True, True, True, True, True, False, True, False])
    # Bins [0, .05) [.05, .1) [.1, .2) [.2, .3) [.3, .4) [.4, ...): 0, .049, .01 | .05 | .12 | .2 | .35 | .45
    assert negative_iou_counts(iou, neg).tolist() == [3, 1, 1, 1, 1, 1]
    assert negative_iou_counts(iou, torch.zeros_like(neg)).tolist() == [0] * 6


def test_gradient_sums_l1_by_hand():
    # L1 (smooth L1, beta 0): |dL/dx| = 1 for x != 0. Row 0: loss 0.4 (inlier), gradient 3;
    # row 1: loss 2.3 (outlier), gradient 4; row 2 is background (weight 0).
    residual = torch.tensor([[0.1, -0.1, 0.2, 0.0], [1.0, 0.5, -0.5, 0.3], [5.0, 5.0, 5.0, 5.0]])
    loss, grad = box_reg_loss_and_grad(residual, "smooth_l1", smooth_l1_beta=0.0)
    sums = inlier_gradient_sums(loss, grad, torch.tensor([True, True, False]))
    torch.testing.assert_close(sums, torch.tensor([3.0, 7.0, 1.0, 2.0]))


def test_gradient_sums_smooth_l1_beta_1_by_hand():
    # Row 0: loss 0.005 + 0.005 + 0.02 = 0.03, gradient 0.4; row 1: loss 0.5 + 0.125 + 0.125 +
    # 0.045 = 0.795 (still an inlier), gradient 2.3; row 2: loss 1.5 (outlier), gradient 1.
    residual = torch.tensor([[0.1, -0.1, 0.2, 0.0], [1.0, 0.5, -0.5, 0.3], [2.0, 0.0, 0.0, 0.0]])
    loss, grad = box_reg_loss_and_grad(residual, "smooth_l1", smooth_l1_beta=1.0)
    torch.testing.assert_close(loss.sum(1), torch.tensor([0.03, 0.795, 1.5]))
    sums = inlier_gradient_sums(loss, grad, torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(sums, torch.tensor([2.7, 3.7, 2.0, 3.0]))


def test_gradient_sums_balanced_l1_by_hand():
    # |x| = 0.5: L = 0.400568 (docs/methods.md#balanced-l1-loss), an inlier, gradient 0.5 ln(0.5 b + 1);
    # |x| = 1: L = 1.078594, an outlier, gradient gamma = 1.5.
    residual = torch.tensor([[0.5, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]], dtype=torch.float64)
    loss, grad = box_reg_loss_and_grad(residual, "balanced_l1")
    torch.testing.assert_close(loss.sum(1), torch.tensor([0.400568, 1.078594], dtype=torch.float64), atol=1e-6, rtol=0)
    inlier_grad = 0.5 * math.log(0.5 * B + 1)
    sums = inlier_gradient_sums(loss, grad, torch.ones(2))
    torch.testing.assert_close(sums, torch.tensor([inlier_grad, inlier_grad + 1.5, 1.0, 2.0], dtype=torch.float64))


def test_fixed_rule_shares_by_hand():
    # One rule, smooth L1 (beta 1) loss < 1: row 0 (|x| = 0.5, loss 0.125) and row 2 (|x| = 1.2,
    # loss 0.7) are inliers, row 1 (|x| = 2, loss 1.5) is not. Gradients: smooth L1 0.5, 1, 1;
    # balanced L1 0.5 ln(0.5 b + 1), 1.5, 1.5. By balanced L1's own loss (0.40, 2.58, 1.38)
    # only row 0 is an inlier.
    residual = torch.tensor([[0.5, 0, 0, 0], [0, -2.0, 0, 0], [0, 0, 1.2, 0]], dtype=torch.float64)
    g = 0.5 * math.log(0.5 * B + 1)
    shares = fixed_rule_gradient_shares(residual)
    assert shares["rois"] == 3 and shares["inlier_share"] == pytest.approx(2 / 3)
    assert shares["smooth_l1_grad_share"] == pytest.approx(1.5 / 2.5)
    assert shares["balanced_l1_grad_share"] == pytest.approx((g + 1.5) / (g + 3.0))
    assert shares["balanced_l1_own_inlier_share"] == pytest.approx(1 / 3)
    assert shares["balanced_l1_own_grad_share"] == pytest.approx(g / (g + 3.0))
    empty = fixed_rule_gradient_shares(torch.zeros(0, 4))
    assert empty["rois"] == 0 and all(math.isnan(v) for k, v in empty.items() if k != "rois")
    with pytest.raises(ValueError, match="R, 4"):
        fixed_rule_gradient_shares(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="smooth_l1_beta"):
        fixed_rule_gradient_shares(residual, smooth_l1_beta=0.0)


@pytest.mark.parametrize("variant,beta", [("paper", 1.0), ("paper", 0.11), ("mmdet", 0.11), ("mmdet", 0.5)])
def test_fig5_gradient_is_autograds(variant, beta):
    options = BalancedL1Options(beta=beta, variant=variant)
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    x = x[(x.abs() - beta).abs() > 1e-3]  # away from the transition point
    x.requires_grad_(True)
    balanced_l1_loss(x, torch.zeros_like(x), beta=beta, variant=variant, reduction="sum").backward()
    torch.testing.assert_close(balanced_l1_grad(x.detach().abs(), options), x.grad.abs())


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_smooth_l1_gradient_is_autograds(beta):
    x = torch.linspace(-2, 2, 401, dtype=torch.float64)
    x = x[((x.abs() - beta).abs() > 1e-3) & (x != 0)].requires_grad_(True)
    smooth_l1_loss(x, torch.zeros_like(x), beta, reduction="sum").backward()
    loss, grad = box_reg_loss_and_grad(x.detach(), "smooth_l1", smooth_l1_beta=beta)
    torch.testing.assert_close(grad, x.grad.abs())


def test_other_loss_types_are_refused():
    with pytest.raises(ValueError, match="giou"):
        box_reg_loss_and_grad(torch.zeros(2, 4), "giou")


def roi_heads(overrides=()):
    cfg = load_cfg(CONFIG, ["MODEL.DEVICE", "cpu", *overrides])
    return build_roi_heads(cfg, {f"p{i}": ShapeSpec(channels=64, stride=2**i) for i in range(2, 7)})


def scene(num_gt, num_proposals, seed, size=256):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_gt, 2, generator=g) * (size - 80)
    gt = torch.cat([xy, xy + 30 + torch.rand(num_gt, 2, generator=g) * 40], 1)
    # Proposals near the GT boxes (every IoU) and anywhere (mostly IoU 0).
    near = gt.repeat(num_proposals // (2 * num_gt) + 1, 1)[: num_proposals // 2]
    near = near + torch.randn(near.shape, generator=g) * 15
    xy = torch.rand(num_proposals - len(near), 2, generator=g) * (size - 40)
    boxes = torch.cat([near, torch.cat([xy, xy + 10 + torch.rand(len(xy), 2, generator=g) * 30], 1)]).clamp(0, size)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 2)
    proposals = Instances((size, size), proposal_boxes=Boxes(boxes), objectness_logits=torch.zeros(len(boxes)))
    targets = Instances((size, size), gt_boxes=Boxes(gt), gt_classes=torch.randint(0, 10, (num_gt,), generator=g))
    return proposals, targets


@pytest.mark.parametrize("neg", ["iou_balanced", "random"])
def test_sampling_statistics_count_the_sampled_negatives(neg):
    heads = roi_heads(["MODEL.LIBRA.SAMPLER.NEG", neg])
    (p0, t0), (p1, t1) = scene(4, 600, seed=1), scene(6, 800, seed=2)
    with EventStorage() as storage:
        sampled = heads.label_and_sample_proposals([p0, p1], [t0, t1])
        logged = {k: storage.history(k).latest() for k in BIN_KEYS}
        num_bg = storage.history("roi_head/num_bg_samples").latest()
        share = storage.history("roi_head/hard_negative_share").latest()
    # Recount from the returned RoIs: the background ones, by IoU with their image's GT boxes.
    ious = torch.cat(
        [pairwise_iou(t.gt_boxes, s.proposal_boxes).max(0).values[s.gt_classes == 10] for s, t in zip(sampled, [t0, t1])]
    )
    edges = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 2.0]
    want = [float(((ious >= lo) & (ious < hi)).sum()) / 2 for lo, hi in zip(edges[:-1], edges[1:])]
    assert [logged[k] for k in BIN_KEYS] == pytest.approx(want)
    assert sum(logged.values()) == pytest.approx(num_bg)
    assert share == pytest.approx(float((ious >= 0.05).double().mean()))


def test_iou_balanced_sampling_takes_more_hard_negatives_than_random():
    # Seeded: the scene's negatives are mostly IoU 0; K = 3 bins take a third from each.
    shares = {}
    for neg in ("random", "iou_balanced"):
        heads = roi_heads(["MODEL.LIBRA.SAMPLER.NEG", neg])
        with EventStorage() as storage:
            proposals, targets = scene(4, 1500, seed=5)
            heads.label_and_sample_proposals([proposals], [targets])
            shares[neg] = storage.history("roi_head/hard_negative_share").latest()
    assert shares["iou_balanced"] > shares["random"] + 0.1, shares


def fg_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    n = 12
    boxes = torch.rand(n, 2, generator=g) * 100
    boxes = torch.cat([boxes, boxes + 20 + torch.rand(n, 2, generator=g) * 30], 1)
    # GT boxes from nearly the proposal (inliers) to far off (outliers).
    gt = boxes + torch.randn(n, 4, generator=g) * torch.linspace(0.1, 6, n)[:, None]
    p = Instances((200, 200), proposal_boxes=Boxes(boxes), gt_boxes=Boxes(gt))
    p.gt_classes = torch.tensor([3, 1, 10, 7, 10, 2, 0, 9, 10, 4, 5, 6])
    return p


@pytest.mark.parametrize("loss_type,beta", [("balanced_l1", 0.0), ("smooth_l1", 0.0), ("smooth_l1", 0.5)])
def test_gradient_shares_match_autograd_of_the_loss(loss_type, beta):
    heads = roi_heads(
        ["MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", loss_type, "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", str(beta)]
    )
    pred = heads.box_predictor
    p = fg_batch()
    deltas = (torch.randn(len(p), 40, generator=torch.Generator().manual_seed(1)) * 0.1).requires_grad_(True)
    scores = torch.zeros(len(p), 11)
    with EventStorage(start_iter=19) as storage:  # (19 + 1) % 20 == 0: a logging iteration
        losses = pred.losses((scores, deltas), [p])
        losses["loss_box_reg"].backward()
        grad_share = storage.history("box_reg/inlier_grad_share").latest()
        inlier_share = storage.history("box_reg/inlier_share").latest()
    # Independently: each foreground RoI's gradient from autograd, its loss from the loss function.
    fg = p.gt_classes < 10
    rows = torch.arange(len(p))[fg]
    cls = p.gt_classes[fg]
    grad = deltas.grad.view(len(p), 10, 4)[rows, cls].abs().sum(1)
    target = pred.box2box_transform.get_deltas(p.proposal_boxes.tensor[fg], p.gt_boxes.tensor[fg])
    selected = deltas.detach().view(len(p), 10, 4)[rows, cls]
    if loss_type == "balanced_l1":
        roi_loss = balanced_l1_loss(selected, target).sum(1)
    else:
        roi_loss = smooth_l1_loss(selected, target, beta).sum(1)
    inlier = roi_loss < 1
    assert 0 < inlier.sum() < len(rows)  # the draw has inliers and outliers
    assert grad_share == pytest.approx(float(grad[inlier].sum() / grad.sum()), rel=1e-5)
    assert inlier_share == pytest.approx(float(inlier.double().mean()))


def test_gradient_shares_only_on_the_periods_iterations():
    pred = roi_heads(["MODEL.LIBRA.ANALYSIS.GRAD_SHARE_PERIOD", "5"]).box_predictor
    p = fg_batch()
    logged = []
    with EventStorage() as storage:
        for it in range(12):
            storage.iter = it
            pred.losses((torch.zeros(len(p), 11), torch.zeros(len(p), 40)), [p])
        logged = [i for _, i in storage.history("box_reg/inlier_grad_share").values()]
    assert logged == [4, 9]
    off = roi_heads(["MODEL.LIBRA.ANALYSIS.GRAD_SHARE_PERIOD", "0"]).box_predictor
    with EventStorage(start_iter=19) as storage:
        off.losses((torch.zeros(len(p), 11), torch.zeros(len(p), 40)), [p])
        assert "box_reg/inlier_grad_share" not in storage.histories()


def test_negative_period_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"MODEL\.LIBRA\.ANALYSIS\.GRAD_SHARE_PERIOD"):
        roi_heads(["MODEL.LIBRA.ANALYSIS.GRAD_SHARE_PERIOD", "-1"])


@pytest.fixture(scope="module")
def short_run(tiny_scenes, tmp_path_factory):
    """3 training iterations on the tiny split, statistics every iteration; returns (dir, storage)."""
    out = tmp_path_factory.mktemp("analysis_run")
    cfg = load_cfg(CONFIG, [*TINY, "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
                            "SOLVER.CHECKPOINT_PERIOD", "1000", "MODEL.LIBRA.ANALYSIS.GRAD_SHARE_PERIOD", "1",
                            "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "OUTPUT_DIR", str(out)])  # fmt: skip
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return out, trainer.storage


def test_training_writes_the_statistics_every_iteration(short_run):
    out, storage = short_run
    num_bg = [v for v, _ in storage.history("roi_head/num_bg_samples").values()]
    bins = [[v for v, _ in storage.history(k).values()] for k in BIN_KEYS]
    assert len(num_bg) == 3 and all(len(b) == 3 for b in bins)
    for it in range(3):
        assert sum(b[it] for b in bins) == pytest.approx(num_bg[it])
    for key in ("roi_head/hard_negative_share", "box_reg/inlier_grad_share", "box_reg/inlier_share"):
        values = [v for v, _ in storage.history(key).values()]
        assert len(values) == 3 and all(0 <= v <= 1 for v in values), (key, values)
    last = json.loads((out / "metrics.json").read_text().splitlines()[-1])
    assert set(BIN_KEYS) <= set(last) and "box_reg/inlier_grad_share" in last


def test_training_stats_command_plots_the_run(short_run, tmp_path, capsys):
    out, _ = short_run
    png = tmp_path / "stats.png"
    assert training_stats.main(["--metrics", str(out / "metrics.json"), "--labels", "tiny", "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000
    assert "tiny: hard-negative share" in capsys.readouterr().out


def test_training_stats_by_hand_and_without_statistics(tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    lines = [
        {"iteration": i, "roi_head/num_bg_iou_00_05": float(i), "roi_head/hard_negative_share": 0.5}
        for i in (19, 39, 59, 79)
    ]
    metrics.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    records = training_stats.read_metrics(str(metrics))
    assert training_stats.mean_bins(records)[0] == pytest.approx((59 + 79) / 2)  # 2nd half of the run
    (tmp_path / "empty.json").write_text(json.dumps({"iteration": 19, "total_loss": 1.0}) + "\n")
    code = training_stats.main(["--metrics", str(tmp_path / "empty.json"), "--out", str(tmp_path / "x.png")])
    assert code == 2 and "no imbalance statistics" in capsys.readouterr().err


def test_fig3_command_end_to_end(short_run, tiny_scenes, tmp_path, capsys):
    out, _ = short_run
    png = tmp_path / "fig3.png"
    argv = ["--config-file", str(REPO / CONFIG), "--out", str(png), "--split", "tiny_scenes_val",
            *TINY, "MODEL.WEIGHTS", str(out / "model_final.pth")]  # fmt: skip
    assert iou_histograms.main(argv) == 0
    assert png.stat().st_size > 10_000
    lines = [line for line in capsys.readouterr().out.splitlines() if " negatives, " in line]
    counts = {line.split(":")[0]: int(line.split()[1]) for line in lines}
    shares = {line.split(":")[0]: float(line.split(", ")[1].split()[0]) for line in lines}
    assert set(counts) == {"random", "iou_balanced", "hard", "candidates"}
    # The same number of negatives in each sampled set: 4 images x (64 RoIs - positives) at most;
    # the candidates are every negative proposal they are drawn from.
    assert len({counts[k] for k in ("random", "iou_balanced", "hard")}) == 1 and 0 < counts["random"] <= 4 * 64
    assert counts["candidates"] >= counts["random"]
    assert all(0 <= s <= 100 for s in shares.values())


def test_fig3_sets_on_the_tiny_model(short_run, tiny_scenes):
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    out, _ = short_run
    cfg = load_cfg(CONFIG, [*TINY, "MODEL.WEIGHTS", str(out / "model_final.pth")])
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    ious = iou_histograms.negative_ious(model, cfg, DatasetCatalog.get("tiny_scenes_val")[:2], seed=0)
    for values in ious.values():
        assert ((values >= 0) & (values < 0.5)).all()  # negatives: IoU below the background threshold
    edges, shares = iou_histograms.iou_histogram(ious["hard"], 0.5)
    assert len(edges) == 11 and shares.sum() == pytest.approx(1.0)
    # Same seed, same draws.
    again = iou_histograms.negative_ious(model, cfg, DatasetCatalog.get("tiny_scenes_val")[:2], seed=0)
    assert all(torch.equal(ious[k], again[k]) for k in ious)
    # With room for every RoI, all three sets are all the negatives: the same IoUs.
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 4096
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    every = iou_histograms.negative_ious(model, cfg, DatasetCatalog.get("tiny_scenes_val")[:2], seed=0)
    assert len(every["random"]) > len(ious["random"])
    for name in ("iou_balanced", "hard"):
        torch.testing.assert_close(every[name].sort().values, every["random"].sort().values)


def test_fig3_refuses_a_missing_checkpoint(tmp_path, capsys):
    code = iou_histograms.main(["--config-file", str(REPO / CONFIG), "--out", str(tmp_path / "x.png"),
                                "MODEL.WEIGHTS", str(tmp_path / "none.pth")])  # fmt: skip
    assert code == 2 and "none.pth" in capsys.readouterr().err


def test_fig5_curves_cross_the_inlier_boundary_where_expected(tmp_path, capsys):
    x, rows = balanced_l1_curves.curves(BalancedL1Options(), [0.0, 1.0], max_x=3.0, steps=3000)
    step = 3.0 / 3000
    crossings = {label: c for label, _, _, c in rows}
    assert crossings["L1 (smooth L1, beta 0)"] == pytest.approx(1.0, abs=step)  # |x| = 1
    assert crossings["smooth L1 (beta 1)"] == pytest.approx(1.5, abs=step)  # |x| - 0.5 = 1
    # Balanced L1 passes 1 inside |x| < 1 since L(1) = 1.0786 > 1 (docs/methods.md#balanced-l1-loss).
    c = crossings["balanced L1 (alpha 0.5, gamma 1.5, beta 1, paper)"]
    assert 0.9 < c < 1.0
    at = torch.tensor([c - step, c], dtype=torch.float64)
    below, above = balanced_l1_loss(at, torch.zeros_like(at)).tolist()
    assert below < 1 <= above
    png = tmp_path / "fig5.png"
    assert balanced_l1_curves.main(["--config-file", str(REPO / CONFIG), "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000
    assert "balanced L1 (alpha 0.5" in capsys.readouterr().out
    assert balanced_l1_curves.main(["--out", str(png), "MODEL.LIBRA.BALANCED_L1.GAMMA", "0"]) == 2
    assert "MODEL.LIBRA.BALANCED_L1.GAMMA" in capsys.readouterr().err


def test_inlier_gradients_command_on_a_run_folder(short_run, tiny_scenes, tmp_path, capsys):
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    out, _ = short_run
    cfg = load_cfg(CONFIG, [*TINY, "MODEL.WEIGHTS", str(out / "model_final.pth")])
    (out / "config.yaml").write_text(cfg.dump())
    result = tmp_path / "shares.json"
    argv = ["--runs", str(out), "--labels", "tiny", "--max-images", "3", "--seed", "1", "--out", str(result)]
    assert inlier_gradients.main(argv) == 0
    assert "tiny: " in capsys.readouterr().out
    (row,) = json.loads(result.read_text())
    assert row["split"] == "tiny_scenes_train" and row["images"] == 3 and row["rois"] > 0
    # The command's figures are those of the residuals the model samples, same seed same RoIs.
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    residual = inlier_gradients.foreground_residuals(model, cfg, DatasetCatalog.get("tiny_scenes_train")[:3], seed=1)
    assert residual.shape == (row["rois"], 4)
    assert row == {**row, **fixed_rule_gradient_shares(residual)}
    # The predictor's losses are its own again afterwards.
    assert "losses" not in vars(model.roi_heads.box_predictor)


def test_inlier_gradients_command_refuses_bad_folders(tmp_path, capsys):
    assert inlier_gradients.main(["--runs", str(tmp_path)]) == 2
    assert "config.yaml not found" in capsys.readouterr().err
