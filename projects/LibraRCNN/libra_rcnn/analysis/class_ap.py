"""The per-class AP of a run's final evaluation as a bar chart (PNG).

    python -m libra_rcnn.analysis.class_ap --metrics OUTPUT_DIR/metrics.json --out class_ap.png

Detectron2's ``COCOEvaluator`` writes each class's box AP as ``bbox/AP-<class name>`` with the
final evaluation; the chart shows them sorted, with the mean (the run's AP) as a line. Several
``--metrics`` files (e.g. the seeds of one config) give each class's mean and spread.
"""
import argparse
import json
import statistics
import sys
from typing import Dict, List, Optional

from ..config import EXIT_BAD_INPUT
from . import save_figure

__all__ = ["class_ap", "draw_class_ap", "main"]

PROG = "python -m libra_rcnn.analysis.class_ap"
PREFIX = "bbox/AP-"


def class_ap(metrics_file: str) -> Dict[str, float]:
    """Class name -> box AP (%) of the last evaluation in a Detectron2 ``metrics.json``.

    Raises:
        ValueError: when the file holds no per-class AP, naming it.
    """
    found: Dict[str, float] = {}
    with open(metrics_file, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line) if line.strip() else {}
            per_class = {k[len(PREFIX) :]: v for k, v in record.items() if k.startswith(PREFIX)}
            if per_class:
                found = per_class
    if not found:
        raise ValueError(f"{metrics_file} holds no per-class AP ({PREFIX}<class>): the final evaluation did not run")
    return found


def draw_class_ap(runs: List[Dict[str, float]], output: str, title: str = "") -> str:
    """Bars of each class's AP (mean over ``runs``, one sample std as error bar), best first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(runs[0], key=lambda n: -statistics.fmean(r[n] for r in runs))
    means = [statistics.fmean(r[n] for r in runs) for n in names]
    spread = [statistics.stdev(r[n] for r in runs) if len(runs) > 1 else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 1.5), 3.6))
    bars = ax.bar(range(len(names)), means, yerr=spread, capsize=3, color="#2b6cb0")
    ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    ax.axhline(statistics.fmean(means), color="black", lw=0.8, ls="--", label=f"mean {statistics.fmean(means):.1f}")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("box AP (%)" + (f", mean ± std of {len(runs)} runs" if len(runs) > 1 else ""))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, output)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", nargs="+", required=True, help="metrics.json of one or more runs (same classes)")
    parser.add_argument("--out", required=True, help="PNG path")
    parser.add_argument("--title", default="", help="title of the chart")
    args = parser.parse_args(argv)
    try:
        runs = [class_ap(path) for path in args.metrics]
        if any(set(r) != set(runs[0]) for r in runs):
            raise ValueError("the --metrics files name different classes")
    except (OSError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(draw_class_ap(runs, args.out, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
