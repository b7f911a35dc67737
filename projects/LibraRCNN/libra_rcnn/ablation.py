"""Ablation runner: train and evaluate a list of configs, once per seed, with one schedule,
then write a Markdown table (mean ± std over the seeds) and a bar chart with error bars.

    python -m libra_rcnn.ablation --out output/ablation/table2 \\
        --configs configs/FashionScenes/ablation/table2_*.yaml [--seeds 7 8 9] [KEY VALUE ...]

Each (config, seed) trains in its own process (``python -m libra_rcnn.engine --resume``, so
the GPU is used when there is one) into ``OUT/<config name>/seed_<seed>/``, seed by seed (every
config at the first seed, then every config at the second, ...), so that a stopped runner has
whole tables for its first seeds; trailing ``KEY VALUE`` pairs apply to every run. Before
anything trains, every run is built and checked, and the schedule (``SCHEDULE_KEYS``) must be
the same for all of them. A finished run leaves ``result.json`` in its folder and is never
trained again; a stopped one resumes from its last checkpoint, so several tables can share the
runs of one ``--out``. The table (``OUT/<table>.md``), its figures per seed
(``OUT/<table>.json``) and the chart (``OUT/<table>.png``; ``--table``, default ``ablation``)
cover every config given, in the order given; the first one is the reference of ``ΔAP``, and
each row is also compared with the row before it (``step``: what a component added on top of
the previous row buys, as Table 2 adds them).

Per run: box AP, AP50, AP75, APs, APm, APl of the final evaluation (Detectron2's
``COCOEvaluator``, in %), seconds per training iteration (median of Detectron2's ``time``
scalar over the logged windows after the first), the peak memory of the training process
(:class:`libra_rcnn.engine.PeakMemoryHook`: CUDA tensors on a GPU, resident set on the CPU),
and the inference time per image of the final evaluation (Detectron2's log line). Per config,
the table gives the mean and the sample standard deviation (n - 1 in the denominator) over
the seeds; ``ΔAP`` is the mean of the per-seed differences to the first config at the same
seed (paired: a seed sets the data order and the initialisation), with their sample standard
deviation, and "beyond noise" says whether a two-sided paired t-test rejects a zero mean
difference at the 5 % level (:func:`paired_difference`). The step to the previous row is
paired and tested the same way.
"""
import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

import detectron2
from detectron2.config import CfgNode

from .engine import InputError, build_config, check_inputs

__all__ = [
    "SCHEDULE_KEYS",
    "METRICS",
    "main",
    "config_settings",
    "collect_result",
    "summarize",
    "paired_difference",
    "student_t_quantile",
    "welch_difference",
    "write_table",
    "plot_results",
]

# Config keys that must be equal across the configs of one ablation (SEED is set by the runner).
SCHEDULE_KEYS = (
    "SOLVER.MAX_ITER",
    "SOLVER.IMS_PER_BATCH",
    "SOLVER.BASE_LR",
    "SOLVER.LR_SCHEDULER_NAME",
    "SOLVER.STEPS",
    "SOLVER.WARMUP_ITERS",
    "INPUT.MIN_SIZE_TRAIN",
    "INPUT.MAX_SIZE_TRAIN",
)
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RESULT_FILE = "result.json"
_PURE_COMPUTE = re.compile(r"Total inference pure compute time: .*\(([0-9.]+) s / iter per device")


def config_settings(cfg: CfgNode, prefix: str = "") -> Dict[str, object]:
    """Every leaf of ``cfg`` as ``{dotted key: value}``, values as JSON gives them back
    (tuples become lists), so that settings read from a ``result.json`` compare equal."""
    flat: Dict[str, object] = {}
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            flat.update(config_settings(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return json.loads(json.dumps(flat))


def _changed_settings(stored: Dict[str, object], current: Dict[str, object]) -> List[str]:
    """Keys whose value differs between a finished run and the config now. Keys that only one
    side has (added or removed by a newer version of the project) do not count, nor does
    ``OUTPUT_DIR``: a folder of finished runs may be moved or reached by another path."""
    shared = (stored.keys() & current.keys()) - {"OUTPUT_DIR"}
    return sorted(k for k in shared if stored[k] != current[k])


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m libra_rcnn.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", required=True, help="config files, in table order")
    parser.add_argument("--out", required=True, help="folder of the runs, the table and the chart")
    parser.add_argument("--table", default="ablation", help="file name of the table (.md) and chart (.png) in --out")
    parser.add_argument(
        "--seeds", "--seed", type=int, nargs="+", default=[7], help="SEED values: every config trains once per seed (default 7)"
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs per run (Detectron2's --num-gpus)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides for every config")
    return parser.parse_args(argv)


def _prepare(args: argparse.Namespace) -> List[dict]:
    """Build and check every (config, seed) run, seed by seed.

    Returns:
        list of ``{"name", "seed", "config", "opts", "cfg", "settings", "out_dir"}``, every
        config at the first seed, then every config at the second, and so on.

    Raises:
        InputError: a missing or refused config, two configs with the same file name, a seed
            given twice, a config without exactly one test dataset, or a schedule that
            differs between configs.
    """
    if len(set(args.seeds)) != len(args.seeds):
        raise InputError(f"--seeds {' '.join(map(str, args.seeds))} names a seed twice")
    names: Dict[str, str] = {}
    for path in args.configs:
        name = Path(path).stem
        if name in names:
            raise InputError(f"{path} and {names[name]} have the same name {name!r}")
        names[name] = path
    runs: List[dict] = []
    for seed in args.seeds:
        for name, path in names.items():
            out_dir = os.path.join(args.out, name, f"seed_{seed}")
            opts = list(args.opts) + ["SEED", str(seed), "OUTPUT_DIR", out_dir]
            run_args = argparse.Namespace(config_file=path, opts=opts, eval_only=False)
            cfg = build_config(run_args)
            check_inputs(cfg, run_args)
            if len(cfg.DATASETS.TEST) != 1:
                raise InputError(f"{path}: DATASETS.TEST must name one dataset, not {tuple(cfg.DATASETS.TEST)}")
            settings = config_settings(cfg)
            runs.append(dict(name=name, seed=seed, config=path, opts=opts, cfg=cfg, settings=settings, out_dir=out_dir))
    first = runs[0]
    for run in runs:
        for key in SCHEDULE_KEYS:
            if run["settings"][key] != first["settings"][key]:
                raise InputError(
                    f"{run['config']}: {key} = {run['settings'][key]!r} differs from "
                    f"{first['settings'][key]!r} in {first['config']}; one ablation needs one schedule "
                    f"(override it for all: ... {key} VALUE)"
                )
    return runs


def _train(run: dict, num_gpus: int) -> None:
    cmd = [sys.executable, "-m", "libra_rcnn.engine", "--config-file", run["config"], "--resume"]
    cmd += ["--num-gpus", str(num_gpus), *run["opts"]]
    print("[ablation] " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd)
    if done.returncode != 0:
        log = os.path.join(run["out_dir"], "log.txt")
        raise RuntimeError(f"training {run['config']} failed (exit {done.returncode}); see {log}")


def collect_result(out_dir: str) -> dict:
    """Figures of one finished run from its Detectron2 ``metrics.json``.

    Records repeated by a resumed run are counted once (the last one of an iteration wins).

    Returns:
        dict with ``METRICS`` (box AP in %), ``s_per_iter``, ``peak_memory_mib`` and
        ``s_per_image`` (inference, from ``log.txt``).

    Raises:
        RuntimeError: when ``metrics.json`` holds no final box AP.
    """
    path = os.path.join(out_dir, "metrics.json")
    by_iter: Dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_iter.setdefault(record["iteration"], {}).update(record)
    records = [by_iter[i] for i in sorted(by_iter)]
    final = [r for r in records if "bbox/AP" in r]
    if not final:
        raise RuntimeError(f"{path} holds no bbox/AP: the final evaluation did not run")
    times = [r["time"] for r in records if "time" in r]
    memory = [r["peak_memory_mib"] for r in records if "peak_memory_mib" in r]
    result = {m: final[-1][f"bbox/{m}"] for m in METRICS}
    result["s_per_iter"] = statistics.median(times[1:] or times) if times else float("nan")
    result["peak_memory_mib"] = max(memory) if memory else float("nan")
    result["s_per_image"] = _inference_time(os.path.join(out_dir, "log.txt"))
    return result


def _inference_time(log_path: str) -> float:
    """Seconds per image of the last evaluation, from Detectron2's own log line ("Total
    inference pure compute time: ... (X s / iter per device ...)", batch 1 at test); NaN if none."""
    found = float("nan")
    if os.path.isfile(log_path):
        with open(log_path) as f:
            for line in f:
                match = _PURE_COMPUTE.search(line)
                if match:
                    found = float(match.group(1))
    return found


def _write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)  # atomic: a stopped runner never leaves half a result


def hardware() -> str:
    """One line naming the device, the CPU and the versions that produced the figures."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU only, {os.cpu_count()} cores"
    return f"{device}; {cpu}; torch {torch.__version__}, detectron2 {detectron2.__version__}"


def student_t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t distribution with ``df`` >= 1 degrees of
    freedom (not necessarily whole), by bisection on its CDF (Simpson's rule on the density;
    accurate to about 1e-6)."""
    if not (0.5 < p < 1.0 and df >= 1):
        raise ValueError(f"need 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float, steps: int = 2000) -> float:
        h = t / steps
        f = [math.exp(log_norm - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(steps + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, 2 * hi
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def _mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean and sample standard deviation (n - 1; NaN for one value)."""
    values = [float(v) for v in values]
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return {"mean": mean, "std": std}


def paired_difference(values: Dict[int, float], reference: Dict[int, float]) -> Dict[str, object]:
    """``values - reference`` paired by seed (seed -> metric), over the seeds both have.

    Returns:
        dict with ``mean`` and ``std`` (sample, n - 1) of the per-seed differences, ``n``, and
        ``beyond_noise``: True when a two-sided paired t-test at the 5 % level rejects a zero
        mean (|mean| > t(0.975, n - 1) * std / sqrt(n)); None when n < 2.
    """
    seeds = sorted(values.keys() & reference.keys())
    diffs = [values[k] - reference[k] for k in seeds]
    out: Dict[str, object] = {"n": len(diffs), **_mean_std(diffs)} if diffs else {"n": 0, "mean": float("nan"), "std": float("nan")}
    beyond: Optional[bool] = None
    if len(diffs) > 1:
        bound = student_t_quantile(0.975, len(diffs) - 1) * out["std"] / math.sqrt(len(diffs))
        beyond = abs(out["mean"]) > bound
    out["beyond_noise"] = beyond
    return out


def welch_difference(values: Sequence[float], reference: Sequence[float]) -> Dict[str, object]:
    """``mean(values) - mean(reference)`` for independent samples, with Welch's t-test.

    For runs whose seeds do not pair (two frameworks draw their random streams differently), the
    difference of the means, its standard error ``se = sqrt(s1^2 / n1 + s2^2 / n2)`` (sample
    variances, n - 1), the Welch-Satterthwaite degrees of freedom
    ``df = se^4 / ((s1^2 / n1)^2 / (n1 - 1) + (s2^2 / n2)^2 / (n2 - 1))``, and ``beyond_noise``:
    True when the two-sided test at 5 % rejects a zero difference (|mean| > t(0.975, df) * se);
    None with fewer than two values on either side.
    """
    a, b = [float(v) for v in values], [float(v) for v in reference]
    out: Dict[str, object] = {"n": [len(a), len(b)]}
    if not a or not b:
        return {**out, "mean": float("nan"), "se": float("nan"), "df": float("nan"), "beyond_noise": None}
    sa, sb = _mean_std(a), _mean_std(b)
    out["mean"] = sa["mean"] - sb["mean"]
    if len(a) < 2 or len(b) < 2:
        return {**out, "se": float("nan"), "df": float("nan"), "beyond_noise": None}
    va, vb = sa["std"] ** 2 / len(a), sb["std"] ** 2 / len(b)
    out["se"] = math.sqrt(va + vb)
    if out["se"] == 0.0:
        return {**out, "df": float("inf"), "beyond_noise": out["mean"] != 0.0}
    out["df"] = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    out["beyond_noise"] = abs(out["mean"]) > student_t_quantile(0.975, out["df"]) * out["se"]
    return out


def summarize(results: Sequence[dict]) -> List[dict]:
    """Per-config summary of per-run results (dicts of :func:`collect_result` plus ``name``,
    ``seed``, ``device``), in first-seen order of the names.

    Returns:
        list of ``{"name", "device", "seeds", "per_seed": {metric: {seed: value}},
        <metric>: {"mean", "std"} for every metric and timing, "delta_AP": paired_difference(...),
        "step_AP": paired_difference(...)}``; ``delta_AP`` compares with the first config,
        ``step_AP`` with the config before (for the first, with itself).
    """
    keys = METRICS + ("s_per_iter", "peak_memory_mib", "s_per_image")
    rows: Dict[str, dict] = {}
    for r in results:
        row = rows.setdefault(r["name"], {"name": r["name"], "device": r["device"], "per_seed": {k: {} for k in keys}})
        for k in keys:
            row["per_seed"][k][int(r["seed"])] = r[k]
    summary = list(rows.values())
    for k, row in enumerate(summary):
        row["seeds"] = sorted(row["per_seed"]["AP"])
        for key in keys:
            row[key] = _mean_std(row["per_seed"][key].values())
        row["delta_AP"] = paired_difference(row["per_seed"]["AP"], summary[0]["per_seed"]["AP"])
        row["step_AP"] = paired_difference(row["per_seed"]["AP"], summary[max(k - 1, 0)]["per_seed"]["AP"])
    return summary


def _cell(stat: Dict[str, float], fmt: str, sign: str = "") -> str:
    text = format(stat["mean"], sign + fmt)
    return text if math.isnan(stat["std"]) else f"{text} ± {format(stat['std'], fmt)}"


def write_table(summary: Sequence[dict], path: str, header: str = "") -> str:
    """Markdown table of :func:`summarize`'s rows: mean ± sample std over the seeds (the value
    alone for one seed). Returns the text it wrote to ``path``."""
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
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
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


def _finished_result(run: dict) -> Optional[dict]:
    """The stored result of a finished run, with its figures read again from the run's own
    files; None when the run has not finished. Exits (2) when it was made with other settings."""
    result_path = os.path.join(run["out_dir"], RESULT_FILE)
    if not os.path.isfile(result_path):
        return None
    with open(result_path) as f:
        result = json.load(f)
    changed = _changed_settings(result["settings"], run["settings"])
    if changed:
        print(
            f"python -m libra_rcnn.ablation: error: {result_path} was made with other settings "
            f"than {run['config']} has now ({', '.join(changed)}); remove {run['out_dir']} "
            "or choose another --out",
            file=sys.stderr,
        )
        sys.exit(2)
    result.update(collect_result(run["out_dir"]))
    return result


def main(argv=None) -> List[dict]:
    """Run the ablation; returns :func:`summarize`'s rows in table order. See the module docstring."""
    args = _parse_args(argv)
    try:
        runs = _prepare(args)
    except InputError as e:
        print(f"python -m libra_rcnn.ablation: error: {e}", file=sys.stderr)
        sys.exit(2)
    os.makedirs(args.out, exist_ok=True)
    finished = {id(run): _finished_result(run) for run in runs}  # every stored result checked before training
    results = []
    for run in runs:
        result = finished[id(run)]
        if result is not None:
            print(f"[ablation] {run['name']}, seed {run['seed']}: finished before, not trained again", flush=True)
        else:
            _train(run, args.num_gpus)
            result = collect_result(run["out_dir"])
            result.update(name=run["name"], seed=run["seed"], config=run["config"], device=run["cfg"].MODEL.DEVICE)
            result["settings"] = run["settings"]
            _write_json(os.path.join(run["out_dir"], RESULT_FILE), result)
        results.append(result)
    order = {name: k for k, name in enumerate(dict.fromkeys(r["name"] for r in runs))}
    summary = summarize(sorted(results, key=lambda r: order[r["name"]]))
    cfg = runs[0]["cfg"]
    schedule = (
        f"{cfg.SOLVER.MAX_ITER} iterations, batch {cfg.SOLVER.IMS_PER_BATCH}, "
        f"LR {cfg.SOLVER.BASE_LR} ({cfg.SOLVER.LR_SCHEDULER_NAME}), SEED {', '.join(map(str, args.seeds))}"
    )
    command = "python -m libra_rcnn.ablation " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (
        f"Schedule: {schedule}. Hardware: {hardware()}.\nCommand: `{command}`\n\n"
        "Mean ± sample standard deviation (n - 1) over the seeds; ΔAP: mean ± sample std of the per-seed "
        "differences to the first row; step: the same to the row above; beyond noise: a two-sided paired t-test "
        "at 5 % rejects a zero difference.\n"
    )
    table = write_table(summary, os.path.join(args.out, args.table + ".md"), header)
    _write_json(os.path.join(args.out, args.table + ".json"), {"command": command, "schedule": schedule, "rows": summary})
    plot_results(summary, os.path.join(args.out, args.table + ".png"), f"box AP on {cfg.DATASETS.TEST[0]}; {schedule}")
    print(table, flush=True)
    return summary


if __name__ == "__main__":
    main()
