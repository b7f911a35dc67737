"""Plot the imbalance statistics that training wrote to ``metrics.json``.

    python -m libra_rcnn.analysis.training_stats --metrics RUN1/metrics.json [RUN2/metrics.json ...]
        [--labels NAME1 NAME2 ...] --out stats.png

Reads the scalars of ``LibraROIHeads`` and ``LibraFastRCNNOutputLayers`` (see
:mod:`libra_rcnn.modeling.imbalance`) from Detectron2's ``metrics.json`` (one JSON object per line,
written by ``JSONWriter``) of one or more runs and draws three panels:

- (a) ``roi_head/hard_negative_share``: share of the sampled negatives at IoU >= 0.05, over
  the iterations;
- (b) ``roi_head/num_bg_iou_*``: sampled negatives per image in each IoU bin, averaged over
  the second half of each run's logged iterations;
- (c) ``box_reg/inlier_grad_share`` (solid) and ``box_reg/inlier_share`` (dashed): the
  inliers' share of the box-regression gradient and of the foreground RoIs, over the
  iterations.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..config import EXIT_BAD_INPUT
from ..modeling.imbalance import HARD_NEGATIVE_IOU, NEG_IOU_BIN_EDGES, NEG_IOU_BIN_NAMES
from . import save_figure

__all__ = ["read_metrics", "series", "mean_bins", "draw_training_stats", "main"]

PROG = "python -m libra_rcnn.analysis.training_stats"

BIN_KEYS = tuple(f"roi_head/num_bg_iou_{name}" for name in NEG_IOU_BIN_NAMES)


def read_metrics(path: str) -> List[dict]:
    """The records of a Detectron2 ``metrics.json`` (one JSON object per line).

    Raises:
        ValueError: naming the file and line for a line that is not JSON.
        OSError: for a file that cannot be read.
    """
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: not JSON ({e})") from e
    return records


def series(records: Sequence[dict], key: str) -> Tuple[np.ndarray, np.ndarray]:
    """(iterations, values) of ``key`` over the records that have it, by iteration."""
    points = sorted((r["iteration"], r[key]) for r in records if key in r and "iteration" in r)
    return np.array([p[0] for p in points], dtype=np.int64), np.array([p[1] for p in points], dtype=np.float64)


def mean_bins(records: Sequence[dict]) -> np.ndarray:
    """float (len(NEG_IOU_BIN_NAMES),): negatives per image in each IoU bin, averaged over
    the second half of the logged iterations (NaN where a bin was never logged)."""
    out = []
    for key in BIN_KEYS:
        _, values = series(records, key)
        out.append(values[len(values) // 2 :].mean() if len(values) else np.nan)
    return np.array(out)


def _bin_label(k: int) -> str:
    lo = NEG_IOU_BIN_EDGES[k]
    hi = f"{NEG_IOU_BIN_EDGES[k + 1]:g}" if k + 1 < len(NEG_IOU_BIN_EDGES) else "bg"
    return f"[{lo:g}, {hi})"


def draw_training_stats(runs: Dict[str, Sequence[dict]], output: str, title: str = "") -> str:
    """Draw the three panels for ``runs`` (label -> records) into a PNG; returns ``output``.

    Raises:
        ValueError: when no run has any of the statistics.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("roi_head/hard_negative_share", "box_reg/inlier_grad_share") + BIN_KEYS
    if not any(len(series(records, k)[0]) for records in runs.values() for k in keys):
        raise ValueError(
            f"no imbalance statistics ({', '.join(keys[:2])}, ...) in the metrics of {', '.join(runs)}: "
            "were the runs trained with LibraROIHeads?"
        )
    fig, (ax_hard, ax_bins, ax_grad) = plt.subplots(1, 3, figsize=(16, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(len(runs), 1)
    for i, (label, records) in enumerate(runs.items()):
        color = colors[i % len(colors)]
        ax_hard.plot(*series(records, "roi_head/hard_negative_share"), color=color, label=label)
        bins = mean_bins(records)
        ax_bins.bar(np.arange(len(bins)) + (i - (len(runs) - 1) / 2) * width, bins, width, color=color, label=label)
        ax_grad.plot(*series(records, "box_reg/inlier_grad_share"), color=color, label=f"{label}: of the gradient")
        ax_grad.plot(*series(records, "box_reg/inlier_share"), color=color, ls="--", label=f"{label}: of the RoIs")
    ax_hard.set(
        title=f"(a) sampled negatives at IoU >= {HARD_NEGATIVE_IOU:g}", xlabel="iteration", ylabel="share", ylim=(0, 1)
    )
    ax_bins.set(
        title="(b) sampled negatives by IoU (2nd half of the run)",
        xlabel="IoU with the nearest GT box",
        ylabel="negatives per image",
        xticks=np.arange(len(NEG_IOU_BIN_NAMES)),
        xticklabels=[_bin_label(k) for k in range(len(NEG_IOU_BIN_NAMES))],
    )
    ax_grad.set(
        title="(c) share of inliers (RoI box loss < 1)",
        xlabel="iteration",
        ylabel="share",
        ylim=(0, 1.02),
    )
    for ax in (ax_hard, ax_bins, ax_grad):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, output)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Plot the imbalance statistics of training runs' metrics.json.")
    parser.add_argument("--metrics", nargs="+", required=True, help="metrics.json of each run")
    parser.add_argument("--labels", nargs="*", default=None, help="a name per run (default: its folder's name)")
    parser.add_argument("--out", required=True, help="PNG path")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    labels = args.labels or [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in args.metrics]
    try:
        if len(labels) != len(args.metrics):
            raise ValueError(f"--labels has {len(labels)} names for {len(args.metrics)} --metrics files")
        runs = {label: read_metrics(path) for label, path in zip(labels, args.metrics)}
        for label, records in runs.items():
            hard = series(records, "roi_head/hard_negative_share")[1]
            grad = series(records, "box_reg/inlier_grad_share")[1]
            bins = " ".join(f"{_bin_label(k)} {v:.1f}" for k, v in enumerate(mean_bins(records)))
            print(
                f"{label}: hard-negative share {np.mean(hard[len(hard) // 2:]) if len(hard) else float('nan'):.3f}, "
                f"inlier gradient share {np.mean(grad[len(grad) // 2:]) if len(grad) else float('nan'):.3f} "
                f"(means over the 2nd half); negatives per image by IoU: {bins}"
            )
        print(draw_training_stats(runs, args.out, args.title))
    except (OSError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
