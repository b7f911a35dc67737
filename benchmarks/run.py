"""The benchmark command: every measurement in one process and one run, then the report.

    .venv/bin/python -m benchmarks            # about 15 min on a 2-core CPU

writes ``benchmarks/results/results.json`` (every figure, the raw times included) and
``benchmarks/results/results.md`` (the tables); ``--update-docs`` then rewrites the docs'
generated blocks (``make docs``), docs/benchmarks.md's copy of results.md among them. See
benchmarks/README.md.
"""

import argparse
import datetime
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

from . import authors, bfp, detectors, flops, report, sampler
from .common import devices, environment, load_average, regenerate_docs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINTS = REPO / "output" / "runs"
ACCURACY_TESTS = ("tests/test_sampling.py", "tests/test_bfp.py")
PARTS = ["detectors", "flops", "authors", "sampler", "bfp", "non_local", "tests"]


def parse_args(argv=None) -> argparse.Namespace:
    """The command's options, checked before anything is measured.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Raises:
        SystemExit: status 2, with argparse's one-line ``python -m benchmarks: error: ...``, for an
            unknown option, a count below 1, ``--checkpoints`` with ``--random-weights`` or with an
            empty folder name, or a FashionScenes pair to time whose trained weights are not in
            ``--checkpoints`` while ``--random-weights`` is not given (:func:`weights_problem`).
    """
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for results.json and results.md")
    p.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], help="default: cpu, and cuda when available")
    p.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts (default: all)")
    p.add_argument(
        "--suites", nargs="+", choices=["FashionScenes", "COCO size"], default=["FashionScenes", "COCO size"]
    )
    p.add_argument("--families", nargs="+", choices=["rcnn", "retinanet"], default=["rcnn", "retinanet"],
                   help="detector pairs: Faster R-CNN vs Libra R-CNN, RetinaNet vs Libra RetinaNet")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--processes", type=int, default=1,
                   help="measure each detector pair (and ours against mmdetection's) this many times, each with "
                        "fresh worker processes; its ratios are the median over them")  # fmt: skip
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch threads of every measuring process (default: torch's, one per core)")  # fmt: skip
    g = p.add_argument_group("detectors")
    g.add_argument("--fashion-batch", type=int, default=4, help="FashionScenes images per step (the configs' 4)")
    g.add_argument("--coco-batch", type=int, nargs="+", default=[2],
                   help="COCO-size images per step on a GPU, one measurement each (2: the 1x schedule's per GPU)")
    g.add_argument("--precision", nargs="+", choices=["float32", "amp"], default=["float32"],
                   help="amp: Detectron2's AMPTrainer (float16) on a GPU, bfloat16 autocast on the CPU")
    g.add_argument("--coco-batch-cpu", type=int, default=1, help="COCO-size images per step on the CPU")
    g.add_argument("--train-warmup", type=int, default=2)
    g.add_argument("--train-repeats", type=int, default=10)
    g.add_argument("--coco-train-warmup", type=int, default=2)
    g.add_argument("--coco-train-repeats", type=int, default=6)
    g.add_argument("--infer-warmup", type=int, default=2)
    g.add_argument("--infer-repeats", type=int, default=20)
    g.add_argument("--coco-infer-warmup", type=int, default=2)
    g.add_argument("--coco-infer-repeats", type=int, default=12)
    weights = g.add_mutually_exclusive_group()
    weights.add_argument("--checkpoints", default=str(DEFAULT_CHECKPOINTS),
                         help="folder of the FashionScenes pairs' trained weights: DIR/<config name>/seed_<N>/"
                         "model_final.pth (the lowest N; what python -m libra_rcnn.ablation --out DIR writes) or "
                         "DIR/<config name>/model_final.pth (a train_net.py OUTPUT_DIR); the command stops before "
                         "measuring when one is missing (default: output/runs)")  # fmt: skip
    weights.add_argument("--random-weights", action="store_true",
                         help="time the FashionScenes pairs with random init instead of trained weights (their "
                         "inference then keeps other numbers of boxes than trained models do); the COCO-size "
                         "pairs always start from random init")  # fmt: skip
    g = p.add_argument_group("sampler and BFP")
    g.add_argument("--sampler-batches", type=int, nargs="+", default=[2, 4, 8, 16])
    g.add_argument("--sampler-warmup", type=int, default=3)
    g.add_argument("--sampler-repeats", type=int, default=20)
    g.add_argument("--bfp-batch", type=int, default=1)
    g.add_argument("--bfp-warmup", type=int, default=1)
    g.add_argument("--bfp-repeats", type=int, default=5)
    p.add_argument("--update-docs", action="store_true",
                   help="then rewrite the docs' generated blocks (make docs): docs/benchmarks.md shows results.md")  # fmt: skip
    args = p.parse_args(argv)
    for name in ("threads", "processes", "fashion_batch", "coco_batch_cpu", "train_repeats", "coco_train_repeats",
                 "infer_repeats", "coco_infer_repeats", "sampler_repeats", "bfp_batch", "bfp_repeats"):  # fmt: skip
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(b < 1 for b in args.coco_batch):
        p.error(f"--coco-batch must be >= 1, got {args.coco_batch}")
    if any(b < 1 for b in args.sampler_batches):
        p.error(f"--sampler-batches must be >= 1, got {args.sampler_batches}")
    if not args.random_weights and not args.checkpoints:
        p.error("--checkpoints needs a folder; --random-weights times the FashionScenes pairs with random init")
    problem = weights_problem(args)
    if problem:
        p.error(problem)
    return args


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (the commands run from its root), else absolute."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def weights_problem(args: argparse.Namespace) -> Optional[str]:
    """Why the detector pairs that ``args`` selects cannot be timed as asked, in one line, or None.

    The FashionScenes pairs are timed with their trained weights, found in ``args.checkpoints``
    by :func:`detectors.checkpoint_for`; a missing config is a problem unless
    ``args.random_weights`` asks for random init. COCO-size pairs need no weights.

    Args:
        args: the parsed options; reads ``only``, ``suites``, ``families``, ``checkpoints`` and
            ``random_weights``.

    Returns:
        None when every selected FashionScenes config has its weights, when random init is asked
        for, or when no FashionScenes pair is measured; else a line that names the configs without
        weights, the folder searched and its two layouts, ``--random-weights``, and the commands
        that train them into the folder (one ablation per pair: a pair's two configs share a
        schedule).
    """
    if args.random_weights or "detectors" not in (args.only or PARTS):
        return None
    missing = []  # per selected pair, its configs without weights
    for pair in detectors.PAIRS:
        if pair.suite in args.suites and pair.family in args.families:
            configs = detectors.missing_checkpoints(pair, args.checkpoints)
            if configs:
                missing.append(configs)
    if not missing:
        return None
    configs = [c for pair_configs in missing for c in pair_configs]
    folder = _shown(Path(args.checkpoints))
    name = Path(configs[0]).stem if len(configs) == 1 else "<config name>"
    train = " && ".join(
        f".venv/bin/python -m libra_rcnn.ablation --out {shlex.quote(folder)} --configs {' '.join(pair_configs)}"
        for pair_configs in missing
    )
    return (
        f"no trained weights for {', '.join(configs)} in {folder} (looked for {folder}/{name}/seed_<N>/model_final.pth "
        f"and {folder}/{name}/model_final.pth); pass --random-weights to time randomly initialised models "
        f"instead, or train them first: {train}"
    )


def run_tests(log) -> dict:
    """Runs the sampler's and the BFP's tests (pytest) and returns each file's summary line."""
    outcomes = {}
    for path in ACCURACY_TESTS:
        log(f"  pytest {path} ...")
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path],
                              cwd=REPO, capture_output=True, text=True)  # fmt: skip
        lines = [l for l in proc.stdout.strip().splitlines() if l.strip()]
        outcomes[path] = {"passed": proc.returncode == 0, "summary": lines[-1].strip("= ") if lines else "no output"}
    return outcomes


def main(argv=None) -> dict:
    args = parse_args(argv)
    parts = set(args.only or PARTS)
    targets = devices(args.devices)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    def log(msg):
        print(msg, flush=True)

    results = {
        "command": " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "environment": environment(),
        "devices": targets,
        "options": {k: v for k, v in vars(args).items() if k not in ("out", "update_docs", "only")},
        "load_before": load_average(),
    }
    if "tests" in parts:
        log("accuracy tests")
        results["tests"] = run_tests(log)
    for device in targets:
        if "detectors" in parts:
            log(f"detectors on {device}")
            for pair in detectors.PAIRS:
                if pair.suite not in args.suites or pair.family not in args.families:
                    continue
                coco = pair.suite == "COCO size"
                batches = ([args.coco_batch_cpu] if device == "cpu" else args.coco_batch) if coco else [args.fashion_batch]
                for batch_size in batches:
                    for precision in args.precision:
                        runs = [
                            detectors.measure_pair(
                                pair,
                                device,
                                batch_size=batch_size,
                                train_warmup=args.coco_train_warmup if coco else args.train_warmup,
                                train_repeats=args.coco_train_repeats if coco else args.train_repeats,
                                infer_warmup=args.coco_infer_warmup if coco else args.infer_warmup,
                                infer_repeats=args.coco_infer_repeats if coco else args.infer_repeats,
                                checkpoints=None if args.random_weights else args.checkpoints,
                                seed=args.seed,
                                threads=args.threads,
                                log=log,
                                precision=precision,
                            )
                            for _ in range(args.processes)
                        ]
                        results.setdefault("detectors", []).append(detectors.over_processes(runs, "libra", "baseline"))
        if "flops" in parts and device == "cpu" and "COCO size" in args.suites:
            log("multiply-adds at COCO size")
            results["flops"] = flops.measure_flops(args.families, args.seed, log)
        if "authors" in parts and device == "cpu":
            missing = authors.available()
            if missing:
                log(f"ours against mmdetection's Libra R-CNN: not measured, {missing}")
            else:
                log("Libra R-CNN R-50, ours against mmdetection's, on cpu")
                runs = [
                    authors.measure_authors(args.coco_train_warmup, args.coco_train_repeats, args.coco_infer_warmup,
                                            args.coco_infer_repeats, args.seed, args.threads, log)
                    for _ in range(args.processes)
                ]  # fmt: skip
                results["authors"] = detectors.over_processes(runs, "ours", "mmdetection")
        if "sampler" in parts:
            log(f"sampler on {device}")
            measured = sampler.measure_samplers(
                args.sampler_batches, device, args.sampler_warmup, args.sampler_repeats, args.seed, args.threads, log
            )
            results.setdefault("sampler", {"rows": []})["rows"] += measured["rows"]
            results["sampler"]["reference"] = measured["reference"]
        if "bfp" in parts:
            log(f"BFP on {device}")
            results.setdefault("bfp", []).extend(
                bfp.measure_refine_types(device, args.bfp_batch, args.bfp_warmup, args.bfp_repeats, args.seed)
            )
        if "non_local" in parts:
            log(f"non-local block on {device}")
            results.setdefault("non_local", []).extend(
                bfp.measure_non_local(
                    device, sorted({1, 2, args.bfp_batch}), args.bfp_warmup, args.bfp_repeats, args.seed
                )
            )
    results["load_after"] = load_average()
    results["targets"] = report.check_targets(results)
    markdown = report.to_markdown(results)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown)
    if args.update_docs:
        regenerate_docs()
    log(markdown)
    log(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return results
