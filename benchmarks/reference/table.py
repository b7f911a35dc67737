"""Side-by-side tables of our runs and the reference's on FashionScenes (docs/reports/reference_training.md).

    .venv/bin/python -m benchmarks.reference.table

reads the finished runs of both frameworks, per model and seed:

- ours: ``docs/results/runs/<our config>/seed_<N>/`` (``python -m libra_rcnn.ablation``);
- mmdetection's: ``docs/results/reference/<config>/seed_<N>/`` (:mod:`benchmarks.reference.train`),
  with ``comparison.json`` where :mod:`benchmarks.reference.compare` has run;

and writes ``docs/results/reference/equivalence.{md,json}`` and ``loss_curves.png``:

1. training equivalence: AP per seed, mean ± sample std per model and framework, ours − theirs
   (Welch's t-test: the seeds of two frameworks do not pair), and the Libra − baseline gain in
   each framework, paired by seed, with its t-test, and the difference of the two gains;
2. trained weights: each mmdetection model evaluated by mmdetection's ``CocoMetric`` and, once
   converted, by ``train_net.py --eval-only``: the six COCO numbers and the detection-level
   differences;
3. the loss curves of both frameworks, seed by seed (each logs a 20-iteration window: Detectron2
   its median, mmengine its mean).
"""
import argparse
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

from libra_rcnn.ablation import mean_std, paired_difference, welch_difference

from ..common import regenerate_docs
from .train import METRICS

REPO = Path(__file__).resolve().parents[2]
# (model, mmdetection run folder, our run folder)
MODELS = [
    ("Faster R-CNN", "faster_rcnn_R_18_FPN_GN", "table2_l1_a_baseline"),
    # the default: the RPN sampling of the authors' Libra config (neg_pos_ub=5) in both frameworks
    ("Libra R-CNN", "libra_rcnn_R_18_FPN_GN", "libra_rcnn_R_18_FPN_GN"),
    # both without it: Detectron2's RPN, mmdetection's sampler with neg_pos_ub=-1
    ("Libra R-CNN, RPN unbounded", "libra_rcnn_R_18_FPN_GN_rpn_neg_pos_ub_off", "table2_l1_d_balanced_l1"),
    ("RetinaNet", "retinanet_R_18_FPN_GN", "retinanet_R_18_FPN_GN"),
    ("Libra RetinaNet", "libra_retinanet_R_18_FPN_GN", "libra_retinanet_R_18_FPN_GN"),
]
GAINS = [("Libra R-CNN", "Faster R-CNN"), ("Libra R-CNN, RPN unbounded", "Faster R-CNN"),
         ("Libra RetinaNet", "RetinaNet")]
# One difference between the frameworks at a time, for Libra R-CNN: (difference, framework, run
# folder of the default, run folder with the difference changed, what the change is).
DIFFERENCES = [
    ("RPN: negatives per positive bounded at 5", "mmdetection", "libra_rcnn_R_18_FPN_GN",
     "libra_rcnn_R_18_FPN_GN_rpn_neg_pos_ub_off", "bound removed (neg_pos_ub=-1, as Detectron2's RPN)"),
    ("RPN: negatives per positive bounded at 5", "ours", "libra_rcnn_R_18_FPN_GN", "table2_l1_d_balanced_l1",
     "bound removed (MODEL.LIBRA.RPN.NEG_POS_UB -1, Detectron2's RPN: ablation/rpn_neg_pos_ub_off)"),
    ("IoU-balanced sampling: mmdetection's binning", "ours", "table2_l1_d_balanced_l1", "sampler_binning_mmdet",
     "mmdetection's IoU bins (MODEL.LIBRA.SAMPLER.BINNING mmdet), both with Detectron2's RPN"),
]  # fmt: skip


def _seeds(folder: Path) -> List[Path]:
    return sorted(p for p in folder.glob("seed_*") if (p / "result.json").is_file())


def load_runs(ours_root: Path, theirs_root: Path) -> Dict[str, Dict[str, Dict[int, dict]]]:
    """model -> {"ours": {seed: metrics}, "theirs": {seed: metrics}}, metrics in percent."""
    runs: Dict[str, Dict[str, Dict[int, dict]]] = {}
    for model, theirs, ours in MODELS:
        entry = runs.setdefault(model, {"ours": {}, "theirs": {}})
        for run in _seeds(ours_root / ours):
            r = json.loads((run / "result.json").read_text())
            entry["ours"][int(r["seed"])] = {k: r[k] for k in METRICS}
        for run in _seeds(theirs_root / theirs):
            r = json.loads((run / "result.json").read_text())
            entry["theirs"][int(r["seed"])] = r["box_ap"]
    return runs


def _fmt(stat: Dict[str, float]) -> str:
    return f"{stat['mean']:.1f}" + ("" if math.isnan(stat["std"]) else f" ± {stat['std']:.1f}")


def _verdict(test: Dict[str, object]) -> str:
    beyond = test.get("beyond_noise")
    return "—" if beyond is None else ("**yes**" if beyond else "no")


def training_table(runs) -> (str, dict):
    """Markdown and JSON of the training-equivalence table (AP)."""
    lines = ["| model | seeds | Detectron2 (ours), AP per seed | mean ± std | mmdetection, AP per seed | mean ± std "
             "| ours − mmdetection (Welch) | beyond noise |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    data: Dict[str, dict] = {}
    for model, _, _ in MODELS:
        ours, theirs = runs[model]["ours"], runs[model]["theirs"]
        if not ours and not theirs:
            continue
        a = [ours[s]["AP"] for s in sorted(ours)]
        b = [theirs[s]["AP"] for s in sorted(theirs)]
        diff = welch_difference(a, b) if a and b else {"mean": math.nan, "beyond_noise": None}
        data[model] = {"ours": {s: ours[s] for s in sorted(ours)}, "theirs": {s: theirs[s] for s in sorted(theirs)},
                       "ours_AP": mean_std(a) if a else None, "theirs_AP": mean_std(b) if b else None,
                       "difference": diff}  # fmt: skip
        seeds = ", ".join(str(s) for s in sorted(set(ours) | set(theirs)))
        diff_text = "—" if math.isnan(diff["mean"]) else f"{diff['mean']:+.1f}" + (
            f" (se {diff['se']:.1f}, df {diff['df']:.1f})" if not math.isnan(diff.get("se", math.nan)) else "")
        lines.append(f"| {model} | {seeds} | {' / '.join(f'{v:.1f}' for v in a) or '—'} | "
                     f"{_fmt(mean_std(a)) if a else '—'} | {' / '.join(f'{v:.1f}' for v in b) or '—'} | "
                     f"{_fmt(mean_std(b)) if b else '—'} | {diff_text} | {_verdict(diff)} |")  # fmt: skip
    lines += ["", "| gain | Detectron2 (ours), paired by seed | beyond noise | mmdetection, paired by seed "
              "| beyond noise | ours − mmdetection (Welch) | beyond noise |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for method, baseline in GAINS:
        if method not in data or baseline not in data:
            continue
        row, gains = [], {}
        for side in ("ours", "theirs"):
            values = {s: v["AP"] for s, v in runs[method][side].items()}
            reference = {s: v["AP"] for s, v in runs[baseline][side].items()}
            gains[side] = paired_difference(values, reference)
            gains[side]["per_seed"] = {s: values[s] - reference[s] for s in sorted(values.keys() & reference.keys())}
            g = gains[side]
            row += ["—" if not g["n"] else f"{g['mean']:+.1f}" + ("" if math.isnan(g["std"]) else f" ± {g['std']:.1f}"),
                    _verdict(g)]  # fmt: skip
        between = welch_difference(list(gains["ours"]["per_seed"].values()), list(gains["theirs"]["per_seed"].values()))
        gains["ours_minus_theirs"] = between
        row += ["—" if math.isnan(between["mean"]) else f"{between['mean']:+.1f}", _verdict(between)]
        data[f"{method} − {baseline}"] = gains
        lines.append(f"| {method} − {baseline} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n", data


def _aps(folder: Path, theirs: bool) -> Dict[int, float]:
    out = {}
    for run in _seeds(folder):
        r = json.loads((run / "result.json").read_text())
        out[int(r["seed"])] = r["box_ap"]["AP"] if theirs else r["AP"]
    return out


def differences_table(ours_root: Path, theirs_root: Path) -> (str, dict):
    """Markdown and JSON: Libra R-CNN with one difference between the frameworks changed, in the
    framework named, against the same framework's default (Welch's t-test over seeds)."""
    lines = ["| difference | in | change | default, AP per seed | changed, AP per seed | changed − default (Welch) "
             "| beyond noise |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    data = {}
    for name, framework, default, changed, what in DIFFERENCES:
        root = theirs_root if framework == "mmdetection" else ours_root
        a, b = _aps(root / default, framework == "mmdetection"), _aps(root / changed, framework == "mmdetection")
        if not b:
            continue
        diff = welch_difference(list(b.values()), list(a.values())) if a else {"mean": math.nan, "beyond_noise": None}
        data[f"{name} ({framework})"] = {"default": a, "changed": b, "difference": diff}
        def runs_text(v):
            return " / ".join(f"{v[k]:.1f}" for k in sorted(v)) + f" ({_fmt(mean_std(list(v.values())))})"
        lines.append(f"| {name} | {framework} | {what} | {runs_text(a)} | {runs_text(b)} | "
                     f"{diff['mean']:+.1f} | {_verdict(diff)} |")  # fmt: skip
    return "\n".join(lines) + "\n", data


def weights_table(theirs_root: Path) -> (str, dict):
    """Markdown and JSON of the trained-weights comparison (comparison.json of each run)."""
    lines = ["| mmdetection run | CocoMetric AP (printed) | evaluated by | " + " | ".join(METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]  # fmt: skip
    details = ["", "| mmdetection run | detections (mmdetection / ours) | matched one to one | largest box "
               "difference (px) | largest score difference | unmatched | identical (< 0.01 px) | identical, boxes "
               "clipped before NMS |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    data = {}
    for theirs in dict.fromkeys(theirs for _, theirs, _ in MODELS):
        for run in _seeds(theirs_root / theirs):
            file = run / "comparison.json"
            if not file.is_file():
                continue
            c = json.loads(file.read_text())
            name = f"{theirs}/{run.name}"
            data[name] = c
            printed = c["mmdetection_cocometric"]["AP"]
            lines.append(f"| {name} | {printed:.1f} | mmdetection (pycocotools, unrounded) | "
                         + " | ".join(f"{c['mmdetection'][k]:.2f}" for k in METRICS) + " |")  # fmt: skip
            lines.append(f"| | | ours: train_net.py --eval-only | "
                         + " | ".join(f"{c['detectron2'][k]:.2f}" for k in METRICS) + " |")  # fmt: skip
            lines.append("| | | difference | " + " | ".join(f"{c['difference'][k]:+.3f}" for k in METRICS) + " |")
            d = c["detections"]
            residuals = json.loads((run / "residuals.json").read_text()) if (run / "residuals.json").is_file() else {}
            identical = [str(residuals[k]["identical"]) if k in residuals else "—"
                         for k in ("as_evaluated", "clipped_before_nms")]  # fmt: skip
            details.append(f"| {name} | {d['mmdetection_detections']} / {d['detectron2_detections']} | {d['matched']} "
                           f"| {d['max_box_diff_px']:.2g} | {d['max_score_diff']:.2g} | "
                           f"{d['unmatched_mmdetection']} / {d['unmatched_detectron2']} | {' | '.join(identical)} |")  # fmt: skip
            if residuals:
                data[name]["residuals"] = residuals
    return "\n".join(lines + details) + "\n", data


def _curve(path: Path, step_key: str, loss_key: str) -> Optional[tuple]:
    if not path.is_file():
        return None
    xs, ys = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if loss_key in record and step_key in record:
            xs.append(record[step_key] + (1 if step_key == "iteration" else 0))  # Detectron2 counts from 0
            ys.append(record[loss_key])
    return xs, ys


def plot_losses(ours_root: Path, theirs_root: Path, path: Path) -> None:
    """Total training loss against iteration, one panel per model, every seed of both frameworks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODELS), figsize=(4.2 * len(MODELS), 3.4), sharey=False)
    for ax, (model, theirs, ours) in zip(axes, MODELS):
        for run in _seeds(ours_root / ours):
            curve = _curve(run / "metrics.json", "iteration", "total_loss")
            if curve:
                ax.plot(*curve, color="#2b6cb0", alpha=0.8, lw=1, label=f"Detectron2 (ours) {run.name}")
        for run in _seeds(theirs_root / theirs):
            curve = _curve(run / "scalars.json", "step", "loss")
            if curve:
                ax.plot(*curve, color="#c05621", alpha=0.8, lw=1, ls="--", label=f"mmdetection {run.name}")
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("total training loss (20-iteration window)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reference.table", description=__doc__.split("\n")[0])
    parser.add_argument("--ours", default=str(REPO / "docs/results/runs"), help="our run folders")
    parser.add_argument("--theirs", default=str(REPO / "docs/results/reference"), help="mmdetection's run folders")
    parser.add_argument("--update-docs", action="store_true",
                        help="then rewrite the docs' generated blocks (make docs): docs/reports/reference_training.md "
                             "shows equivalence.md")  # fmt: skip
    args = parser.parse_args(argv)
    ours_root, theirs_root = Path(args.ours), Path(args.theirs)
    runs = load_runs(ours_root, theirs_root)
    training, training_data = training_table(runs)
    weights, weights_data = weights_table(theirs_root)
    differences, differences_data = differences_table(ours_root, theirs_root)
    text = "## Training equivalence (box AP, FashionScenes val)\n\n" + training + \
        "\n## Libra R-CNN, one difference at a time\n\n" + differences + \
        "\n## Trained weights: mmdetection's evaluation and ours\n\n" + weights  # fmt: skip
    (theirs_root / "equivalence.md").write_text(text)
    (theirs_root / "equivalence.json").write_text(json.dumps({"training": training_data, "differences": differences_data, "weights": weights_data},
                                                             indent=1, default=str) + "\n")  # fmt: skip
    plot_losses(ours_root, theirs_root, theirs_root / "loss_curves.png")
    if args.update_docs:
        regenerate_docs()
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
