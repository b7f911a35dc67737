"""The summary of a GPU run (``benchmarks/gpu/run.sh``): ``OUT/gpu_run.json`` and ``OUT/gpu_run.md``.

    python -m benchmarks.gpu.summary --mode gpu --work WORK --out OUT

reads what the run's steps left: ``WORK/steps.jsonl`` (each step's exit status and seconds),
``WORK/train_<run>.log`` (train_net.py's AP table, training speed and wall time),
``OUT/host_syncs.json`` and ``OUT/benchmarks.json``; copy the two files into
``benchmarks/results/gpu/`` to commit them (docs/gpu.md).
"""
import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def parse_train_log(text: str) -> Dict[str, object]:
    """AP (bbox) of the final evaluation, iterations and seconds of training, from a train_net.py log."""
    out: Dict[str, object] = {}
    rows = re.findall(r"copypaste: ([\d.,nan]+)\s*$", text, flags=re.M)
    if rows:
        out["box_ap"] = dict(zip(METRICS, (float(v) for v in rows[-1].split(","))))
    speed = re.search(r"Overall training speed: (\d+) iterations in (\d+):(\d+):(\d+) \(([\d.]+) s / it\)", text)
    if speed:
        h, m, s = (int(x) for x in speed.group(2, 3, 4))
        out.update(iterations=int(speed.group(1)), train_seconds=h * 3600 + m * 60 + s, s_per_iter=float(speed.group(5)))
    total = re.search(r"Total training time: (\d+):(\d+):(\d+)", text)
    if total:
        h, m, s = (int(x) for x in total.groups())
        out["total_training_seconds"] = h * 3600 + m * 60 + s
    out["finite"] = "FloatingPointError" not in text and "nan" not in (rows[-1] if rows else "nan").split(",")[0]
    return out


def _load(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def summarize(mode: str, work: Path, out: Path) -> dict:
    steps = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines()] if (work / "steps.jsonl").is_file() else []
    runs = {log.stem[len("train_"):]: parse_train_log(log.read_text()) for log in sorted(work.glob("train_*.log"))}
    syncs = _load(out / "host_syncs.json")
    bench = _load(out / "benchmarks.json")
    return {"mode": mode, "steps": steps, "train": runs,
            "host_syncs": {k: {"count": v["count"], "on_device": v["on_device"],
                               "cuda_sync_debug_mode": v.get("cuda_sync_debug_mode")}
                           for k, v in (syncs or {}).get("models", {}).items()},
            "benchmark_targets": (bench or {}).get("targets", [])}  # fmt: skip


def to_markdown(summary: dict) -> str:
    lines = [f"# GPU run ({summary['mode']})", "", "| step | exit | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['exit']} | {s['seconds']} |" for s in summary["steps"]]
    if summary["train"]:
        lines += ["", "| run | AP | AP50 | AP75 | iterations | s/iter | training s |", "|---|---|---|---|---|---|---|"]
        for name, r in summary["train"].items():
            ap = r.get("box_ap", {})
            lines.append(f"| {name} | " + " | ".join(f"{ap.get(k, float('nan')):.1f}" for k in ("AP", "AP50", "AP75"))
                         + f" | {r.get('iterations', '—')} | {r.get('s_per_iter', '—')} "
                         f"| {r.get('train_seconds', r.get('total_training_seconds', '—'))} |")
    if summary["host_syncs"]:
        lines += ["", "| model | syncs (CPU audit) | on the device | CUDA's sync debug mode |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['count']} | {v['on_device']} | {v['cuda_sync_debug_mode'] if v['cuda_sync_debug_mode'] is not None else '—'} |"
                  for k, v in summary["host_syncs"].items()]  # fmt: skip
    if summary["benchmark_targets"]:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']} | {t['met']} |" for t in summary["benchmark_targets"]]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.summary", description=__doc__.split("\n")[0])
    parser.add_argument("--mode", default="gpu", choices=["gpu", "dry"])
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    summary = summarize(args.mode, Path(args.work), Path(args.out))
    (Path(args.out) / "gpu_run.json").write_text(json.dumps(summary, indent=1) + "\n")
    (Path(args.out) / "gpu_run.md").write_text(to_markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
