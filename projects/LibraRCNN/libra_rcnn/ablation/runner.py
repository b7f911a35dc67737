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
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from ..config import EXIT_BAD_INPUT, InputError, build_config
from ..engine.checks import check_inputs
from .records import RESULT_FILE, changed_settings, collect_result, config_settings, write_json
from .report import hardware, plot_results, write_table
from .stats import summarize

__all__ = ["SCHEDULE_KEYS", "run_ablation", "main"]

PROG = "python -m libra_rcnn.ablation"

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


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
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


def _finished_result(run: dict) -> Optional[dict]:
    """The stored result of a finished run, with its figures read again from the run's own
    files; None when the run has not finished.

    Raises:
        InputError: when it was made with other settings than its config has now.
    """
    result_path = os.path.join(run["out_dir"], RESULT_FILE)
    if not os.path.isfile(result_path):
        return None
    with open(result_path) as f:
        result = json.load(f)
    changed = changed_settings(result["settings"], run["settings"])
    if changed:
        raise InputError(
            f"{result_path} was made with other settings than {run['config']} has now ({', '.join(changed)}); "
            f"remove {run['out_dir']} or choose another --out"
        )
    fresh = collect_result(run["out_dir"])
    if math.isnan(fresh["s_per_image"]):  # a run from before the trainer wrote its inference time
        fresh["s_per_image"] = result.get("s_per_image", fresh["s_per_image"])
    result.update(fresh)
    return result


def run_ablation(args: argparse.Namespace, argv: Optional[List[str]] = None) -> List[dict]:
    """Train what has not finished, then write the table, its JSON and chart into ``args.out``.

    Returns:
        :func:`~libra_rcnn.ablation.stats.summarize`'s rows in table order.

    Raises:
        InputError: for a bad config, seed list or finished run (before anything trains).
        RuntimeError: when a run's training fails, naming its log.
    """
    runs = _prepare(args)
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
            write_json(os.path.join(run["out_dir"], RESULT_FILE), result)
        results.append(result)
    order = {name: k for k, name in enumerate(dict.fromkeys(r["name"] for r in runs))}
    summary = summarize(sorted(results, key=lambda r: order[r["name"]]))
    cfg = runs[0]["cfg"]
    schedule = (
        f"{cfg.SOLVER.MAX_ITER} iterations, batch {cfg.SOLVER.IMS_PER_BATCH}, "
        f"LR {cfg.SOLVER.BASE_LR} ({cfg.SOLVER.LR_SCHEDULER_NAME}), SEED {', '.join(map(str, args.seeds))}"
    )
    command = PROG + " " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (
        f"Schedule: {schedule}. Hardware: {hardware()}.\nCommand: `{command}`\n\n"
        "Mean ± sample standard deviation (n - 1) over the seeds; ΔAP: mean ± sample std of the per-seed "
        "differences to the first row; step: the same to the row above; beyond noise: a two-sided paired t-test "
        "at 5 % rejects a zero difference.\n"
    )
    table = write_table(summary, os.path.join(args.out, args.table + ".md"), header)
    write_json(os.path.join(args.out, args.table + ".json"), {"command": command, "schedule": schedule, "rows": summary})
    plot_results(summary, os.path.join(args.out, args.table + ".png"), f"box AP on {cfg.DATASETS.TEST[0]}; {schedule}")
    print(table, flush=True)
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    """The command (see the module docstring): 0 once the table is written, 2 for bad input."""
    args = _parse_args(argv)
    try:
        run_ablation(args, argv)
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
