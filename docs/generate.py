"""Every figure the docs quote, written from the committed results.

A page marks each generated block with two comments; everything between them is this script's:

    <!-- generated: table results/runs/table2_smooth_l1.md -->
    ...
    <!-- end generated -->

Blocks:
    ``table PATH``           the Markdown table of a result file written by ``libra_rcnn.ablation``
                             (PATH relative to docs/)
    ``table2_decomposition`` the authors' total gain on Table 2 split into its four steps, each
                             with its paired t-test (results/runs/table2_smooth_l1.json and
                             table2_rpn_bound.json)
    ``coco_ap PATH``         the COCO AP table, then the AP of each class, of the last evaluation in
                             a run's metrics.json (PATH relative to docs/)
    ``log_lines PATH REGEX`` the lines of a log that match REGEX, as a code block (time stamps cut)
    ``verdicts PATH``        the verdict lines of a study (its JSON), as a list
    ``study_power PATH``     per step of a study, the step its seeds can find 4 times in 5, and
                             what 5 and 10 seeds would find at the same spread
    ``diagnosis PATH``       the sentences of a study's diagnosis.md, as a list
    ``demo_ap``              the time and AP of a fresh clone's ``make demo`` (results/demo)
    ``models``               the README's model table: the papers' COCO AP beside the AP of our
                             FashionScenes runs (results/runs/NAME/seed_N/result.json, or a
                             one-seed table) and of mmdetection's (results/reference/NAME/seed_N)

    python docs/generate.py            rewrite every block of README.md and docs/*.md (make docs)
    python docs/generate.py --check    exit 1, naming each block whose text differs from the
                                       results (the tests run it)
"""
import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List

from scipy import stats

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
BLOCK = re.compile(r"(<!-- generated: (?P<name>[^>]+?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def _table(path: str) -> str:
    """The table lines (and the verdict lines, if any) of a runner's Markdown result."""
    lines = (DOCS / path).read_text().splitlines()
    return "\n".join(line for line in lines if line.startswith("|")) + "\n"


def _per_seed_ap(result: str) -> Dict[str, Dict[int, float]]:
    rows = json.loads((DOCS / result).read_text())["rows"]
    return {row["name"]: {int(seed): ap for seed, ap in row["per_seed"]["AP"].items()} for row in rows}


def _paired(after: Dict[int, float], before: Dict[int, float]) -> dict:
    """Mean and sample std of the per-seed differences, and a two-sided paired t-test."""
    seeds = sorted(after.keys() & before.keys())
    diffs = [after[s] - before[s] for s in seeds]
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    t = mean / (std / math.sqrt(len(diffs)))
    return {"mean": mean, "std": std, "t": t, "p": float(2 * stats.t.sf(abs(t), len(diffs) - 1)), "seeds": seeds}


def _decomposition() -> str:
    ap = {**_per_seed_ap("results/runs/table2_smooth_l1.json"), **_per_seed_ap("results/runs/table2_rpn_bound.json")}
    name = "table2_smooth_l1_{}".format
    steps = [
        ("a → b", "IoU-balanced sampling", "a_baseline", "b_iou_sampling"),
        ("b → c", "balanced feature pyramid", "b_iou_sampling", "c_iou_sampling_bfp"),
        ("c → d", "balanced L1 loss", "c_iou_sampling_bfp", "d_balanced_l1"),
        ("d → e", "the authors' RPN sampling (`NEG_POS_UB 5`)", "d_balanced_l1", "e_rpn_bound"),
        ("a → e", "**total: baseline → Libra R-CNN as the authors train it**", "a_baseline", "e_rpn_bound"),
        ("a → a'", "the authors' RPN sampling alone, on the baseline", "a_baseline", "a_baseline_rpn_bound"),
        ("a' → e", "the paper's three components, on top of it", "a_baseline_rpn_bound", "e_rpn_bound"),
    ]
    figures = {key: _paired(ap[name(to)], ap[name(frm)]) for key, _, frm, to in steps}
    total = figures["a → e"]["mean"]
    seeds = ", ".join(map(str, figures["a → e"]["seeds"]))
    lines = [
        f"| step | component | ΔAP (paired, seeds {seeds}) | t | p (two-sided) | share of the total |",
        "|---|---|---|---|---|---|",
    ]
    for key, what, _, _ in steps:
        f = figures[key]
        lines.append(f"| {key} | {what} | {f['mean']:+.1f} ± {f['std']:.1f} | {f['t']:.2f} | {f['p']:.3f} | "
                     f"{100 * f['mean'] / total:.0f} % |")  # fmt: skip
    last, first, rest = figures["d → e"], figures["a → a'"], figures["a' → e"]

    def verdict(f: dict) -> str:
        return "beyond noise" if f["p"] < 0.05 else "not beyond noise"

    lines += [
        "",
        f"Added last, the RPN sampling accounts for {last['mean']:.1f} AP of the {total:.1f} AP total "
        f"({100 * last['mean'] / total:.0f} %, {verdict(last)} at p = {last['p']:.3f}); added first, on the "
        f"baseline, for {first['mean']:.1f} AP ({100 * first['mean'] / total:.0f} %, {verdict(first)} at "
        f"p = {first['p']:.3f}). The paper's three components account for the rest: "
        f"{total - last['mean']:.1f} AP ({100 * (total - last['mean']) / total:.0f} %) without the RPN sampling, "
        f"{rest['mean']:.1f} AP ({100 * rest['mean'] / total:.0f} %) on top of it.",
    ]
    return "\n".join(lines) + "\n"


def _ap_cell(values: Dict[int, float], where: str = "") -> str:
    seeds = sorted(values)
    if not seeds:
        return "—"
    if len(seeds) == 1:
        return f"{values[seeds[0]]:.1f} (seed {seeds[0]}{where})"
    ap = [values[s] for s in seeds]
    return f"{statistics.fmean(ap):.1f} ± {statistics.stdev(ap):.1f} (seeds {', '.join(map(str, seeds))}{where})"


def _seed_ap(folder: Path, ap: Callable[[dict], float]) -> str:
    """Mean ± sample std over FOLDER/seed_N/result.json of ``ap(result)``."""
    files = sorted(folder.glob("seed_*/result.json"))
    return _ap_cell({int(f.parent.name[5:]): ap(json.loads(f.read_text())) for f in files})


def _runs(name: str) -> str:
    """The AP of the committed runs results/runs/NAME/seed_N."""
    return _seed_ap(DOCS / "results" / "runs" / name, lambda result: result["AP"])


def _reference(name: str) -> str:
    """The same for mmdetection's runs, results/reference/NAME/seed_N."""
    return _seed_ap(DOCS / "results" / "reference" / name, lambda result: result["box_ap"]["AP"])


def _table_row(path: str, row: str, note: str = "") -> str:
    """The AP of one row of a one-seed runner table, with the seed and machine of its header."""
    text = (DOCS / path).read_text()
    seed = int(re.search(r"SEED (\d+)\.", text).group(1))
    machine = re.search(r"Hardware: [^;]*; ([^;]+);", text).group(1).replace("(R)", "").replace(" Processor", "")
    cells = next(line.split(" | ") for line in text.splitlines() if line.startswith(f"| {row} |"))
    return _ap_cell({seed: float(cells[1])}, f", {machine}{note}")


def _models() -> str:
    """The README's model table (see the module docstring)."""
    giou = "results/detectors.md"
    rows = [
        ("Faster R-CNN R-50-FPN 1x (baseline)", "faster_rcnn_R_50_FPN_1x.yaml", "35.9 (Table 2)",
         "faster_rcnn_R_18_FPN_GN", _runs("table2_l1_a_baseline"), _reference("faster_rcnn_R_18_FPN_GN")),
        ("**Libra R-CNN** R-50-FPN 1x", "libra_rcnn_R_50_FPN_1x.yaml`, `.py", "38.5 val (Table 2)",
         "libra_rcnn_R_18_FPN_GN", _runs("libra_rcnn_R_18_FPN_GN"), _reference("libra_rcnn_R_18_FPN_GN")),
        ("Libra R-CNN R-101-FPN 1x", "libra_rcnn_R_101_FPN_1x.yaml", "40.3 test-dev (Table 1)", None, "—", "—"),
        ("Libra R-CNN X-101-32x8d-FPN 1x", "libra_rcnn_X_101_32x8d_FPN_1x.yaml", "43.0 (the paper's 64x4d)", None,
         "—", "—"),
        ("Libra R-CNN, new baseline recipe (LSJ, 100 ep)", "libra_rcnn_R_50_FPN_100ep_LSJ.py", "—", None, "—", "—"),
        ("Faster R-CNN with GIoU", "faster_rcnn_R_50_FPN_giou_1x.yaml", "36.9 (GIoU Table 5)",
         "faster_rcnn_R_18_FPN_GN_giou", _table_row(giou, "faster_rcnn_R_18_FPN_GN_giou"), "—"),
        ("Libra R-CNN with GIoU for balanced L1", "libra_rcnn_R_50_FPN_giou_1x.yaml", "—",
         "libra_rcnn_R_18_FPN_GN_giou", _table_row(giou, "libra_rcnn_R_18_FPN_GN_giou", ", before the RPN bound was its default"), "—"),
        ("RetinaNet R-50-FPN 1x (baseline)", "retinanet_R_50_FPN_1x.yaml", "37.4 (Detectron2 zoo)",
         "retinanet_R_18_FPN_GN", _runs("retinanet_R_18_FPN_GN"), _reference("retinanet_R_18_FPN_GN")),
        ("**Libra RetinaNet** R-50-FPN 1x", "libra_retinanet_R_50_FPN_1x.yaml`, `.py", "37.8 test-dev (Table 1)",
         "libra_retinanet_R_18_FPN_GN", _runs("libra_retinanet_R_18_FPN_GN"),
         _reference("libra_retinanet_R_18_FPN_GN")),
        ("RetinaNet with GIoU", "retinanet_R_50_FPN_giou_1x.yaml", "—", "retinanet_R_18_FPN_GN_giou",
         _table_row(giou, "retinanet_R_18_FPN_GN_giou"), "—"),
        ("**FSAF** (anchor-free branch alone)", "fsaf_R_{50,101}_FPN_1x.yaml", "35.9 R-50 (FSAF Table 1)",
         "fsaf_R_18_FPN_GN", _table_row("results/fsaf.md", "fsaf_R_18_FPN_GN"), "—"),
        ("**AB+FSAF** (both branches)", "ab_fsaf_R_{50,101}_FPN_1x.yaml", "37.2 R-50 (FSAF Table 1)",
         "ab_fsaf_R_18_FPN_GN", _table_row("results/fsaf.md", "ab_fsaf_R_18_FPN_GN"), "—"),
    ]  # fmt: skip
    lines = ["| model | COCO config | COCO AP (paper) | FashionScenes config | AP measured | mmdetection, same data |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for model, coco, paper, scenes, ours, mmdet in rows:
        lines.append(f"| {model} | `{coco}` | {paper} | {f'`{scenes}`' if scenes else '—'} | {ours} | {mmdet} |")
    return "\n".join(lines) + "\n"


def _last_evaluation(path: str) -> dict:
    """The record of the last box evaluation in a Detectron2 ``metrics.json`` (one JSON per line)."""
    records = [json.loads(line) for line in (DOCS / path).read_text().splitlines() if line.strip()]
    return next(r for r in reversed(records) if "bbox/AP" in r)


def _coco_ap(path: str) -> str:
    """The box AP of the last evaluation in a Detectron2 ``metrics.json``, then each class's."""
    last = _last_evaluation(path)
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    lines = ["| " + " | ".join(names) + " |", "|---" * len(names) + "|",
             "| " + " | ".join(f"{last['bbox/' + n]:.1f}" for n in names) + " |", "",
             "| class | AP |", "|---|---|"]  # fmt: skip
    lines += [f"| {key[len('bbox/AP-'):]} | {value:.1f} |" for key, value in last.items() if key.startswith("bbox/AP-")]
    return "\n".join(lines) + "\n"


def _log_lines(arg: str) -> str:
    """The lines of a Detectron2 log that match a regular expression, without their time stamps."""
    path, _, pattern = arg.partition(" ")
    found = [re.sub(r"^\[\d\d/\d\d \d\d:\d\d:\d\d\] ", "", line)
             for line in (DOCS / path).read_text().splitlines() if re.search(pattern, line)]  # fmt: skip
    if not found:
        raise ValueError(f"no line of {path} matches {pattern!r}")
    return "```\n" + "\n".join(found) + "\n```\n"


def _verdicts(path: str) -> str:
    return "".join(f"- {line}.\n" for line in json.loads((DOCS / path).read_text())["verdicts"])


def _study_power(path: str) -> str:
    """How large a step a study's seeds can detect (80 % power, paired t-test at 5 %), per step."""
    from libra_rcnn.ablation.study import detectable_difference

    rows = json.loads((DOCS / path).read_text())["rows"]
    lines = ["| step | ΔAP (paired) | spread of the step (std) | found 4 times in 5 with "
             f"{rows[0]['step_AP']['n']} seeds | with 5 seeds | with 10 seeds |", "|---|---|---|---|---|---|"]
    for above, row in zip(rows, rows[1:]):
        step = row["step_AP"]
        reach = [detectable_difference(step["std"], n) for n in (step["n"], 5, 10)]
        lines.append(f"| {above['name']} → {row['name']} | {step['mean']:+.1f} | {step['std']:.1f} | "
                     + " | ".join(f"{r:.1f} AP" for r in reach) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _diagnosis(path: str) -> str:
    return "".join(line + "\n" for line in (DOCS / path).read_text().splitlines() if line.startswith("- "))


def _demo_ap() -> str:
    """Two sentences: what a fresh clone's ``make demo`` took and reached (results/demo)."""
    run = json.loads((DOCS / "results" / "demo" / "run.json").read_text())
    last = _last_evaluation("results/demo/metrics.json")
    return (f"From a fresh clone at {run['commit']} ({run['date']}, {run['machine']}) it took "
            f"{run['wall_seconds'] / 60:.0f} min and reached {last['bbox/AP']:.1f} AP ({last['bbox/AP50']:.1f} AP50; "
            "`docs/results/demo/`). Training is deterministic on the CPU for a given code and CPU type; "
            "floating point differs between CPUs, so another CPU may land up to about a point away.\n")


def block_text(name: str) -> str:
    """The text of the block ``name`` (see the module docstring)."""
    kind, _, arg = name.partition(" ")
    generators: Dict[str, Callable[[], str]] = {"table2_decomposition": _decomposition, "models": _models, "demo_ap": _demo_ap}
    if kind == "table":
        return _table(arg)
    if kind == "coco_ap":
        return _coco_ap(arg)
    if kind == "log_lines":
        return _log_lines(arg)
    with_path = {"verdicts": _verdicts, "study_power": _study_power, "diagnosis": _diagnosis}
    if kind in with_path:
        return with_path[kind](arg)
    if kind not in generators:
        raise KeyError(f"unknown generated block {name!r} (known: table PATH, coco_ap PATH, log_lines PATH REGEX, verdicts PATH, study_power PATH, diagnosis PATH, {', '.join(generators)})")
    return generators[kind]()


def pages() -> List[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs")
    args = parser.parse_args(argv)
    stale = []
    for page in pages():
        text = page.read_text()

        def fill(match: re.Match) -> str:
            body = block_text(match["name"])
            if body != match["body"]:
                stale.append(f"{page.relative_to(REPO)}: {match['name']}")
            return match.group(1) + body + match.group(4)

        new = BLOCK.sub(fill, text)
        if new != text and not args.check:
            page.write_text(new)
    for item in stale:
        print(("differs from the results: " if args.check else "rewritten: ") + item)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
