"""Ablation runner: train and evaluate a list of configs with one schedule and seed, then
write a Markdown table and a bar chart of their box AP.

    python -m libra_rcnn.ablation --out output/ablation/table2 \\
        --configs configs/FashionScenes/ablation/table2_*.yaml [--seed 7] [KEY VALUE ...]

Each config trains in its own process (``python -m libra_rcnn.engine --resume``, so the GPU
is used when there is one) into ``OUT/<config name>/``; trailing ``KEY VALUE`` pairs apply to
every config. Before anything trains, every config is built and checked, and the schedule
(``SCHEDULE_KEYS``) must be the same for all of them. A finished config leaves
``OUT/<name>/result.json`` and is not trained again; a stopped one resumes from its last
checkpoint, so several tables can share the runs of one ``--out``. The table
(``OUT/<table>.md``) and the chart (``OUT/<table>.png``, ``--table``, default ``ablation``)
are written from the results of every config given, in the order given; the first one is the
reference of the ``ΔAP`` column.

Per config: box AP, AP50, AP75, APs, APm, APl of the final evaluation (Detectron2's
``COCOEvaluator``, in %), seconds per training iteration (median of Detectron2's ``time``
scalar over the logged windows after the first), the peak memory of the training process
(:class:`libra_rcnn.engine.PeakMemoryHook`: CUDA tensors on a GPU, resident set on the CPU),
and the inference time per image of the final evaluation (Detectron2's log line).
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import torch

import detectron2
from detectron2.config import CfgNode

from .engine import InputError, build_config, check_inputs

__all__ = ["SCHEDULE_KEYS", "METRICS", "main", "config_settings", "collect_result", "write_table", "plot_results"]

# Config keys that must be equal across the configs of one ablation.
SCHEDULE_KEYS = (
    "SOLVER.MAX_ITER",
    "SOLVER.IMS_PER_BATCH",
    "SOLVER.BASE_LR",
    "SOLVER.LR_SCHEDULER_NAME",
    "SOLVER.STEPS",
    "SOLVER.WARMUP_ITERS",
    "INPUT.MIN_SIZE_TRAIN",
    "INPUT.MAX_SIZE_TRAIN",
    "SEED",
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
    side has (added or removed by a newer version of the project) do not count."""
    return sorted(k for k in stored.keys() & current.keys() if stored[k] != current[k])


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m libra_rcnn.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", required=True, help="config files, in table order")
    parser.add_argument("--out", required=True, help="folder of the runs, the table and the chart")
    parser.add_argument("--table", default="ablation", help="file name of the table (.md) and chart (.png) in --out")
    parser.add_argument("--seed", type=int, default=7, help="SEED of every run (default 7)")
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs per run (Detectron2's --num-gpus)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides for every config")
    return parser.parse_args(argv)


def _prepare(args: argparse.Namespace) -> Dict[str, dict]:
    """Build and check every config; returns ``{name: {"config", "opts", "cfg", "settings", "out_dir"}}``.

    Raises:
        InputError: a missing or refused config, two configs with the same file name, a
            config without exactly one test dataset, or a schedule that differs between configs.
    """
    runs: Dict[str, dict] = {}
    for path in args.configs:
        name = Path(path).stem
        if name in runs:
            raise InputError(f"{path} and {runs[name]['config']} have the same name {name!r}")
        out_dir = os.path.join(args.out, name)
        opts = list(args.opts) + ["SEED", str(args.seed), "OUTPUT_DIR", out_dir]
        run_args = argparse.Namespace(config_file=path, opts=opts, eval_only=False)
        cfg = build_config(run_args)
        check_inputs(cfg, run_args)
        if len(cfg.DATASETS.TEST) != 1:
            raise InputError(f"{path}: DATASETS.TEST must name one dataset, not {tuple(cfg.DATASETS.TEST)}")
        runs[name] = {"config": path, "opts": opts, "cfg": cfg, "settings": config_settings(cfg), "out_dir": out_dir}
    first = next(iter(runs.values()))
    for run in runs.values():
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


def write_table(results: Sequence[dict], path: str, header: str = "") -> str:
    """Markdown table of ``results`` (dicts of :func:`collect_result` plus ``name``, ``device``).

    ``ΔAP`` is each row's AP minus the first row's. Returns the text it wrote to ``path``.
    """
    lines = [header] if header else []
    lines += [
        "| config | AP | ΔAP | AP50 | AP75 | APs | APm | APl | s/iter | peak memory (MiB) | s/image (inference) | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        delta = r["AP"] - results[0]["AP"]
        cells = [r["name"], f"{r['AP']:.1f}", f"{delta:+.1f}"] + [f"{r[m]:.1f}" for m in METRICS[1:]]
        cells += [f"{r['s_per_iter']:.3f}", f"{r['peak_memory_mib']:.0f}", f"{r['s_per_image']:.3f}", r["device"]]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def plot_results(results: Sequence[dict], path: str, title: str = "") -> None:
    """Bar chart PNG: AP, AP50 and AP75 (%) per config, AP labelled on its bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in results]
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 2.0), 4.2))
    for k, (metric, colour) in enumerate((("AP", "#2b6cb0"), ("AP50", "#90cdf4"), ("AP75", "#63b3ed"))):
        xs = [i + (k - 1) * width for i in range(len(names))]
        bars = ax.bar(xs, [r[metric] for r in results], width, label=metric, color=colour)
        if metric == "AP":
            ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("box AP (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> List[dict]:
    """Run the ablation; returns the results in table order. See the module docstring."""
    args = _parse_args(argv)
    try:
        runs = _prepare(args)
    except InputError as e:
        print(f"python -m libra_rcnn.ablation: error: {e}", file=sys.stderr)
        sys.exit(2)
    os.makedirs(args.out, exist_ok=True)
    results = []
    for name, run in runs.items():
        result_path = os.path.join(run["out_dir"], RESULT_FILE)
        if os.path.isfile(result_path):
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
            print(f"[ablation] {name}: finished before, not trained again", flush=True)
            result.update(collect_result(run["out_dir"]))  # the figures, always from the run's own files
        else:
            _train(run, args.num_gpus)
            result = collect_result(run["out_dir"])
            result.update(name=name, config=run["config"], device=run["cfg"].MODEL.DEVICE, settings=run["settings"])
            _write_json(result_path, result)
        results.append(result)
    cfg = next(iter(runs.values()))["cfg"]
    schedule = (
        f"{cfg.SOLVER.MAX_ITER} iterations, batch {cfg.SOLVER.IMS_PER_BATCH}, "
        f"LR {cfg.SOLVER.BASE_LR} ({cfg.SOLVER.LR_SCHEDULER_NAME}), SEED {args.seed}"
    )
    command = "python -m libra_rcnn.ablation " + " ".join(sys.argv[1:] if argv is None else argv)
    header = f"Schedule: {schedule}. Hardware: {hardware()}.\nCommand: `{command}`\n"
    table = write_table(results, os.path.join(args.out, args.table + ".md"), header)
    plot_results(results, os.path.join(args.out, args.table + ".png"), f"box AP on {cfg.DATASETS.TEST[0]}; {schedule}")
    print(table, flush=True)
    return results


if __name__ == "__main__":
    main()
