"""The report of an ablation: the Markdown table, the chart and the hardware line of its header."""
import math
import os
import re
from typing import Dict, Sequence

import torch
import detectron2
from torch.utils.collect_env import get_env_info

from ..io import atomic_open
from .records import METRICS

__all__ = ["hardware", "write_table", "plot_results"]


def hardware() -> str:
    """One line naming the device, the CPU and the versions that produced the figures, from
    PyTorch's environment report (``torch.utils.collect_env``)."""
    env = get_env_info()
    cpu = re.search(r"^Model name:\s*(.+)$", env.cpu_info or "", re.MULTILINE)
    cpu = cpu.group(1).strip() if cpu else "CPU model unknown"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU only, {os.cpu_count()} cores"
    return f"{device}; {cpu}; torch {torch.__version__}, detectron2 {detectron2.__version__}"


def _cell(stat: Dict[str, float], fmt: str, sign: str = "") -> str:
    text = format(stat["mean"], sign + fmt)
    return text if math.isnan(stat["std"]) else f"{text} ± {format(stat['std'], fmt)}"


def write_table(summary: Sequence[dict], path: str, header: str = "", footer: str = "") -> str:
    """Markdown table of :func:`summarize`'s rows: mean ± sample std over the seeds (the value
    alone for one seed), between ``header`` and ``footer``. Returns the text it wrote to ``path``."""
    lines = [header] if header else []
    lines += [
        "| config | seeds | AP | ΔAP (paired) | beyond noise | step (paired) | beyond noise | AP50 | AP75 | APs "
        "| APm | APl | s/iter | peak memory (MiB) | s/image (inference) | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, row in enumerate(summary):
        cells = [row["name"], ", ".join(map(str, row["seeds"])), _cell(row["AP"], ".1f")]
        for key in ("delta_AP", "step_AP"):
            beyond = row[key]["beyond_noise"]
            cells += [_cell(row[key], ".1f", "+"), "—" if k == 0 or beyond is None else ("yes" if beyond else "no")]
        cells += [_cell(row[m], ".1f") for m in METRICS[1:]]
        cells += [f"{row['s_per_iter']['mean']:.3f}", f"{row['peak_memory_mib']['mean']:.0f}"]
        cells += [f"{row['s_per_image']['mean']:.3f}", row["device"]]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n" + footer
    with atomic_open(path) as f:
        f.write(text)
    return text


def plot_results(summary: Sequence[dict], path: str, title: str = "") -> None:
    """Bar chart PNG: mean AP, AP50 and AP75 (%) per config with error bars of one sample std
    (none for one seed), each seed's AP as a dot, the mean AP labelled on its bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in summary]
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 2.0), 4.2))
    for k, (metric, colour) in enumerate((("AP", "#2b6cb0"), ("AP50", "#90cdf4"), ("AP75", "#63b3ed"))):
        xs = [i + (k - 1) * width for i in range(len(names))]
        errors = [0.0 if math.isnan(r[metric]["std"]) else r[metric]["std"] for r in summary]
        bars = ax.bar(xs, [r[metric]["mean"] for r in summary], width, yerr=errors, capsize=3, label=metric, color=colour)
        if metric == "AP":
            ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=6)
            for x, r in zip(xs, summary):
                values = list(r["per_seed"]["AP"].values())
                ax.plot([x] * len(values), values, "k.", markersize=3)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("box AP (%), mean ± sample std over seeds")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
