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
import datetime
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..config import EXIT_BAD_INPUT, InputError, build_config
from ..engine.checks import check_inputs
from .records import RESULT_FILE, changed_settings, collect_result, config_settings, write_json
from .report import hardware, plot_results, write_table
from .stats import summarize
from .diagnose import diagnose
from .study import STUDIES, study_rows, verdicts

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
    rows = parser.add_mutually_exclusive_group()
    rows.add_argument("--configs", nargs="+", help="config files, in table order")
    rows.add_argument("--study", choices=STUDIES,
                      help="rows derived from --config-file (libra_rcnn.ablation.study): Table 2's, Libra RetinaNet's, "
                      "or a --sweep of one key")  # fmt: skip
    parser.add_argument("--config-file", help="the config a --study starts from: your data, classes, schedule")
    parser.add_argument("--sweep", nargs="+", metavar="KEY_OR_VALUE", default=[],
                        help="with --study sweep: a config key and its values, e.g. MODEL.LIBRA.SAMPLER.NUM_BINS 2 3 5")
    parser.add_argument("--diagnose", action="store_true",
                        help="also write the diagnosis of the data (libra_rcnn.ablation.diagnose); with --config-file "
                        "alone, only the diagnosis, nothing trains")  # fmt: skip
    parser.add_argument("--out", required=True, help="folder of the runs, the table and the chart")
    parser.add_argument("--table", default=None, help="file name of the table (.md) and chart (.png) in --out "
                        "(default: the study's name, else ablation)")  # fmt: skip
    parser.add_argument(
        "--seeds", "--seed", type=int, nargs="+", default=[7], help="SEED values: every config trains once per seed (default 7)"
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs per run (Detectron2's --num-gpus)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides for every config")
    args = parser.parse_args(argv)
    args.table = args.table or args.study or "ablation"
    if args.study and not args.config_file:
        parser.error("--study needs --config-file: the config the rows start from")
    if not (args.configs or args.study or (args.diagnose and args.config_file)):
        parser.error("give --configs, --study with --config-file, or --diagnose with --config-file")
    return args


def _is_run_folder(weights: str) -> bool:
    """Whether ``weights`` is the ``model_final.pth`` of a training run's folder (its config.yaml beside)."""
    return os.path.isfile(weights) and os.path.isfile(os.path.join(os.path.dirname(weights), "config.yaml"))


def _rows(args: argparse.Namespace) -> List[Tuple[str, str, str, List[str]]]:
    """``(name, what it adds, config file, KEY VALUE overrides)`` of each row, in table order.

    Raises:
        InputError: for two configs of one name, or a study that does not fit the config.
    """
    if args.study:
        cfg = build_config(argparse.Namespace(config_file=args.config_file, opts=list(args.opts)))
        return [(name, what, args.config_file, opts) for name, what, opts in study_rows(args.study, cfg, args.sweep)]
    names: Dict[str, str] = {}
    for path in args.configs:
        name = Path(path).stem
        if name in names:
            raise InputError(f"{path} and {names[name]} have the same name {name!r}")
        names[name] = path
    return [(name, name, path, []) for name, path in names.items()]


def _prepare(args: argparse.Namespace) -> List[dict]:
    """Build and check every (row, seed) run, seed by seed.

    Returns:
        list of ``{"name", "what", "seed", "config", "opts", "cfg", "settings", "out_dir"}``, every
        row at the first seed, then every row at the second, and so on.

    Raises:
        InputError: a missing or refused config, two configs with the same file name, a seed
            given twice, a config without exactly one test dataset, or a schedule that
            differs between configs.
    """
    if len(set(args.seeds)) != len(args.seeds):
        raise InputError(f"--seeds {' '.join(map(str, args.seeds))} names a seed twice")
    rows = _rows(args)
    runs: List[dict] = []
    for seed in args.seeds:
        for name, what, path, row_opts in rows:
            out_dir = os.path.join(args.out, name, f"seed_{seed}")
            opts = list(args.opts) + row_opts + ["SEED", str(seed), "OUTPUT_DIR", out_dir]
            run_args = argparse.Namespace(config_file=path, opts=opts, eval_only=False)
            cfg = build_config(run_args)
            check_inputs(cfg, run_args)
            if len(cfg.DATASETS.TEST) != 1:
                raise InputError(f"{path}: DATASETS.TEST must name one dataset, not {tuple(cfg.DATASETS.TEST)}")
            settings = config_settings(cfg)
            runs.append(dict(name=name, what=what, seed=seed, config=path, opts=opts, cfg=cfg, settings=settings,
                             out_dir=out_dir))  # fmt: skip
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


_ITERATION = re.compile(r"\beta: (\S+)\s+iter: (\d+)")


def _train(run: dict, num_gpus: int, progress: str) -> None:
    """Train one run in its own process; print a line of progress per logged window of Detectron2's
    (``progress`` names the run, e.g. ``[table2 3/15] c_bfp seed 8``), the rest go to its log.txt.

    Raises:
        RuntimeError: when the training fails, with the end of its output.
    """
    cmd = [sys.executable, "-m", "libra_rcnn.engine", "--config-file", run["config"], "--resume"]
    cmd += ["--num-gpus", str(num_gpus), *run["opts"]]
    print("[ablation] " + " ".join(cmd), flush=True)
    max_iter = run["cfg"].SOLVER.MAX_ITER
    tail: List[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as child:
        for line in child.stdout:
            tail = (tail + [line])[-40:]
            found = _ITERATION.search(line)
            if found:
                eta, iteration = found.group(1), int(found.group(2)) + 1
                print(f"{progress}: iteration {iteration}/{max_iter}, this run's ETA {eta}", flush=True)
    if child.returncode != 0:
        log = os.path.join(run["out_dir"], "log.txt")
        raise RuntimeError(f"training {run['config']} failed (exit {child.returncode}); see {log}:\n" + "".join(tail))


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
    todo = sum(r is None for r in finished.values())
    results, started, trained = [], time.monotonic(), 0
    for k, run in enumerate(runs, 1):
        result = finished[id(run)]
        if result is not None:
            print(f"[ablation] {run['name']}, seed {run['seed']}: finished before, not trained again", flush=True)
        else:
            left = ""
            if trained:
                per_run = (time.monotonic() - started) / trained
                left = f", the {todo - trained} runs left about {datetime.timedelta(seconds=round(per_run * (todo - trained)))}"
            _train(run, args.num_gpus, f"[{args.table} {k}/{len(runs)}{left}] {run['name']} seed {run['seed']}")
            trained += 1
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
    # Verdicts where each row is one switch from the row above (a study); a table of --configs
    # may compare rows that are not.
    lines = verdicts(summary, list(dict.fromkeys(r["what"] for r in runs))) if args.study else []
    footer = "\nWhat each row adds, at these seeds:\n\n" + "".join(f"- {line}.\n" for line in lines) if lines else ""
    table = write_table(summary, os.path.join(args.out, args.table + ".md"), header, footer)
    write_json(os.path.join(args.out, args.table + ".json"),
               {"command": command, "schedule": schedule, "rows": summary, "verdicts": lines})  # fmt: skip
    plot_results(summary, os.path.join(args.out, args.table + ".png"), f"box AP on {cfg.DATASETS.TEST[0]}; {schedule}")
    print(table, flush=True)
    if args.diagnose:
        folders = {r["name"]: r["out_dir"] for r in runs if r["seed"] == min(args.seeds)}
        trained = {"baseline": folders.get("a_baseline"), "balanced_l1": folders.get("d_balanced_l1")}
        for line in diagnose(runs[0]["cfg"], args.out, {k: v for k, v in trained.items() if v}):
            print(f"[diagnosis] {line}", flush=True)
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    """The command (see the module docstring): 0 once the table is written, 2 for bad input."""
    args = _parse_args(argv)
    try:
        if args.configs or args.study:
            run_ablation(args, argv)
        else:  # --diagnose of a config alone: its MODEL.WEIGHTS, when a trained model, for Fig. 3
            cfg = build_config(argparse.Namespace(config_file=args.config_file, opts=list(args.opts)))
            trained = {"baseline": os.path.dirname(cfg.MODEL.WEIGHTS)} if _is_run_folder(cfg.MODEL.WEIGHTS) else {}
            for line in diagnose(cfg, args.out, trained):
                print(f"[diagnosis] {line}", flush=True)
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
