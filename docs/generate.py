"""Every figure the docs quote, written from the committed results.

A page marks each generated block with two comments; everything between them is this script's:

    <!-- generated: table results/runs/table2_smooth_l1.md -->
    ...
    <!-- end generated -->

A figure inside a sentence is a block on one line: the opening comment is not followed by a line
break, and what the script writes between the comments is one line too:

    Libra R-CNN reaches <!-- generated: value results/runs/table2_l1.json rows.name=table2_l1_d_balanced_l1.AP.mean .1f -->36.2<!-- end generated --> AP.

Arguments are split as a shell splits them, so an argument with spaces is quoted ("...").
PATH is relative to docs/.

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
    ``paired_steps PATH...`` per step between consecutive rows of ablation-runner JSON results,
                             every metric's difference paired by seed (mean ± sample std), in
                             bold where a two-sided paired t-test at 5 % finds it beyond noise,
                             and the AP difference at each seed
    ``grad_shares RUN...``   per run folder (RUN/seed_N/metrics.json), the inliers' share of the
                             box-regression gradient and of the foreground RoIs, each a mean over
                             the second half of the logged iterations, then mean ± sample std over
                             the seeds, and the ratio of the two means
    ``inlier_gradients PATH`` the output of ``libra_rcnn.analysis.inlier_gradients`` (a JSON list
                             of runs labelled "GROUP, seed N") as a table, one row per group:
                             mean ± sample std over its seeds
    ``resume_position PATH`` the seconds to find a resumed iteration's batch, per layout and
                             iteration (``python -m benchmarks.resume_position``), as a table
    ``same_rows RUN=RUN...`` pairs of runs of the same config, each a row of an ablation-runner
                             JSON result (``PATH#ROW``) or a run folder (``FOLDER``, with
                             FOLDER/seed_N/result.json), pair by pair: AP mean ± sample std of
                             each, their difference and Welch's t-test (independent runs: their
                             seeds do not pair)
    ``report PATH``          a Markdown report a command wrote (``python -m benchmarks``'s
                             results.md, ``benchmarks.reference.table``'s equivalence.md) as it
                             is, its headings one level deeper

Inline (one line, see above):
    ``value PATH FIELD [FORMAT [REDUCER]]``
        one figure of a result file. The file is read as JSON; a file of JSON lines (Detectron2's
        metrics.json, mmengine's scalars.json) as a list of records; a Markdown file as its first
        table, a list of rows that map each column's header to the cell's text. FIELD is a path of
        steps joined by dots: a key of an object (a glob pattern such as ``*`` takes every key it
        matches), or, on a list, an index, ``*`` (every element) or ``KEY=PATTERN`` (the elements
        whose KEY, as text, matches the glob PATTERN). After a pattern, elements that lack a later
        key, and null and NaN values, are skipped. FORMAT is a Python format specification
        (``+.1f``, ``.3f``, ``d``); one that ends in ``%`` writes the value times 100 and `` %``
        (``.0%``: 0.649 -> "65 %"); one that starts with ``G`` writes the value in units of 10^9
        (``G.2f``: 10132684800 -> "10.13"); ``duration`` writes seconds as "9 min 1 s"; ``s`` or none, the
        value as it is. A field that matches several values needs a REDUCER: ``mean``, ``min``,
        ``max``, ``absmax`` (the largest absolute value), ``range`` ("0.79–0.80") or ``list``
        ("3435, 3384, 3472", in the file's order).

    python docs/generate.py            rewrite every block of README.md, docs/*.md and docs/reports/*.md
                                       (make docs)
    python docs/generate.py --check    exit 1, naming each block whose text differs from the
                                       results (the tests run it)
"""
import argparse
import fnmatch
import json
import math
import re
import shlex
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from scipy import stats

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
# A block spans lines when its opening comment ends a line; otherwise it is a figure inside a line.
BLOCK = re.compile(r"(?P<open><!-- generated: (?P<name>[^>]+?) -->(?P<newline>\n)?)"
                   r"(?P<body>(?(newline).*?|[^\n]*?))<!-- end generated -->", re.S)
END = "<!-- end generated -->"


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
    t = mean / (std / math.sqrt(len(diffs))) if std else math.copysign(math.inf, mean) if mean else 0.0
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


def _per_seed(folder: Path, ap: Callable[[dict], float]) -> Dict[int, float]:
    """``ap(result)`` of each FOLDER/seed_N/result.json, by seed N."""
    files = sorted(folder.glob("seed_*/result.json"))
    return {int(f.parent.name[5:]): ap(json.loads(f.read_text())) for f in files}


def _seed_ap(folder: Path, ap: Callable[[dict], float]) -> str:
    """Mean ± sample std over FOLDER/seed_N/result.json of ``ap(result)``."""
    return _ap_cell(_per_seed(folder, ap))


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


METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def _seed_values(row: dict, metric: str) -> Dict[int, float]:
    return {int(seed): value for seed, value in row["per_seed"][metric].items()}


def _paired_steps(arg: str) -> str:
    """Every metric's paired difference between consecutive rows of ablation-runner JSON results."""
    lines = [f"| step | seeds | {' | '.join(METRICS)} | ΔAP per seed |", "|---" * (len(METRICS) + 3) + "|"]
    for path in arg.split():
        rows = json.loads((DOCS / path).read_text())["rows"]
        for before, after in zip(rows, rows[1:]):
            cells = []
            for metric in METRICS:
                f = _paired(_seed_values(after, metric), _seed_values(before, metric))
                cell = f"{f['mean']:+.1f} ± {f['std']:.1f}"
                cells.append(f"**{cell}**" if f["p"] < 0.05 else cell)
            seeds = f["seeds"]
            ap_after, ap_before = _seed_values(after, "AP"), _seed_values(before, "AP")
            per_seed = " / ".join(f"{ap_after[s] - ap_before[s]:+.1f}" for s in seeds)
            lines.append(f"| `{before['name']}` → `{after['name']}` | {', '.join(map(str, seeds))} | "
                         f"{' | '.join(cells)} | {per_seed} |")  # fmt: skip
    lines += ["", "Each cell: the mean ± sample std over the seeds of the per-seed difference (the later row minus "
              "the earlier one, paired by seed); **bold**: beyond noise, a two-sided paired t-test at 5 % rejects "
              "a zero difference."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _run_aps(source: str) -> Tuple[str, List[float]]:
    """The name and the per-seed AP of ``PATH#ROW`` (a row of an ablation-runner JSON result) or
    of a run folder ``FOLDER`` (FOLDER/seed_N/result.json)."""
    path, _, row = source.partition("#")
    if row:
        rows = json.loads((DOCS / path).read_text())["rows"]
        found = next((r for r in rows if r["name"] == row), None)
        if found is None:
            raise KeyError(f"{path} has no row {row!r}; its rows: {', '.join(r['name'] for r in rows)}")
        return row, list(_seed_values(found, "AP").values())
    per_seed = _per_seed(DOCS / path, lambda result: result["AP"])
    if not per_seed:
        raise FileNotFoundError(f"{path}: no seed_N/result.json")
    return Path(path).name, list(per_seed.values())


def _same_rows(arg: str) -> str:
    """Pairs of runs of the same config: AP of each, and Welch's t-test of the difference."""
    lines = ["| config | AP | AP, other run | difference | p (Welch, two-sided) | within noise |", "|---|---|---|---|---|---|"]
    for pair in arg.split():
        (a, x), (b, y) = (_run_aps(source) for source in pair.split("="))
        p = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
        lines.append(f"| `{a}` / `{b}` | {_mean_std(x, '.1f')} | {_mean_std(y, '.1f')} "
                     f"| {statistics.fmean(x) - statistics.fmean(y):+.1f} | {p:.2f} | {'yes' if p >= 0.05 else '**no**'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _mean_std(values: List[float], fmt: str = ".3f") -> str:
    return f"{statistics.fmean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def _grad_shares(arg: str) -> str:
    """The inliers' shares of the box-regression gradient and of the foreground RoIs, over seeds."""
    lines = ["| run | seeds | iterations averaged | inliers' share of the gradient | "
             "inliers' share of the foreground RoIs | ratio |", "|---|---|---|---|---|---|"]  # fmt: skip
    for folder in arg.split():
        shares: Dict[str, Dict[int, float]] = {"box_reg/inlier_grad_share": {}, "box_reg/inlier_share": {}}
        spans = set()
        for path in sorted((DOCS / folder).glob("seed_*/metrics.json")):
            records = _read(str(path.relative_to(DOCS)))
            for key, per_seed in shares.items():
                points = sorted((r["iteration"], r[key]) for r in records if key in r)
                second_half = points[len(points) // 2 :]
                per_seed[int(path.parent.name[5:])] = statistics.fmean(v for _, v in second_half)
                spans.add(f"{second_half[0][0]}–{second_half[-1][0]}")
        grad, rois = ([per_seed[s] for s in sorted(per_seed)] for per_seed in shares.values())
        seeds = sorted(shares["box_reg/inlier_grad_share"])
        lines.append(f"| `{Path(folder).name}` | {', '.join(map(str, seeds))} | {', '.join(sorted(spans))} | "
                     f"{_mean_std(grad)} | {_mean_std(rois)} | "
                     f"{statistics.fmean(grad) / statistics.fmean(rois):.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _inlier_gradients(path: str) -> str:
    """The output of ``libra_rcnn.analysis.inlier_gradients`` as a table, one row per group of seeds."""
    groups: Dict[str, List[dict]] = {}
    for run in json.loads((DOCS / path).read_text()):
        groups.setdefault(run["label"].rpartition(", seed ")[0], []).append(run)
    lines = ["| residuals of the model | foreground RoIs | inliers (smooth L1 < 1) | inliers' gradient share, smooth L1 | "
             "inliers' gradient share, balanced L1 | by balanced L1's own loss < 1: inliers / gradient share |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for group, runs in groups.items():

        def cell(key: str) -> str:
            return _mean_std([run[key] for run in runs])

        seeds = ", ".join(run["label"].rpartition(", seed ")[2] for run in runs)
        configs = ", ".join(sorted({f"`{Path(run['run']).parent.name}`" for run in runs}))
        lines.append(f"| {group} ({configs}), seeds {seeds} | {', '.join(str(round(run['rois'])) for run in runs)} | "
                     f"{cell('inlier_share')} | {cell('smooth_l1_grad_share')} | **{cell('balanced_l1_grad_share')}** | "
                     f"{cell('balanced_l1_own_inlier_share')} / {cell('balanced_l1_own_grad_share')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _read(path: str):
    """A result file as data: JSON; JSON lines as a list of records; Markdown, its first table as a list of rows."""
    text = (DOCS / path).read_text()
    if path.endswith(".md"):
        table = []
        for line in text.splitlines():
            if line.startswith("|"):
                table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            elif table:
                break
        header, rows = table[0], [row for row in table[1:] if not set("".join(row)) <= set("-: ")]
        return [dict(zip(header, row)) for row in rows]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def _select(data, field: str) -> list:
    """The values at FIELD (see ``value`` in the module docstring)."""
    found, many = [data], False
    for step in field.split("."):
        reached = []
        for item in found:
            if isinstance(item, list) and step.isdigit():
                reached.append(item[int(step)])
            elif isinstance(item, list) and step == "*":
                reached += item
                many = True
            elif isinstance(item, list) and "=" in step:
                key, _, pattern = step.partition("=")
                reached += [e for e in item if isinstance(e, dict) and fnmatch.fnmatchcase(str(e.get(key)), pattern)]
                many = many or _is_pattern(pattern)
            elif isinstance(item, dict) and _is_pattern(step):
                reached += [value for key, value in item.items() if fnmatch.fnmatchcase(key, step)]
                many = True
            elif isinstance(item, dict) and step in item:
                reached.append(item[step])
            elif not many:
                raise KeyError(f"no {step!r} in {field!r}")
        found = reached
    return [v for v in found if not (v is None or (many and isinstance(v, float) and math.isnan(v)))]


def _format(value, spec: str) -> str:
    if spec in ("", "s"):
        return str(value)
    number = float(value.replace("−", "-")) if isinstance(value, str) else value
    if spec == "duration":
        minutes, seconds = divmod(round(number), 60)
        return f"{minutes} min {seconds} s" if minutes and seconds else f"{minutes} min" if minutes else f"{seconds} s"
    if spec.endswith("%"):
        return format(100 * number, spec[:-1] + "f") + " %"
    if spec.startswith("G"):
        return format(number / 1e9, spec[1:])
    if spec.endswith("d") and isinstance(number, float) and number.is_integer():
        number = int(number)
    return format(number, spec)


def _value(arg: str) -> str:
    """One figure of a result file (see the module docstring)."""
    path, field, *rest = shlex.split(arg)
    spec, reducer = (rest + ["", ""])[:2]
    values = _select(_read(path), field)
    if not values:
        raise ValueError(f"{path}: nothing at {field!r}")
    if not reducer:
        if len(values) > 1:
            raise ValueError(f"{path}: {len(values)} values at {field!r}; name a reducer (mean, min, max, range, list)")
        return _format(values[0], spec)
    numbers = [float(v.replace("−", "-")) if isinstance(v, str) else v for v in values]
    reducers: Dict[str, Callable[[list], str]] = {
        "mean": lambda v: _format(statistics.fmean(v), spec),
        "min": lambda v: _format(min(v), spec),
        "max": lambda v: _format(max(v), spec),
        "absmax": lambda v: _format(max(map(abs, v)), spec),
        "range": lambda v: f"{_format(min(v), spec)}–{_format(max(v), spec)}",
        "list": lambda v: ", ".join(_format(x, spec) for x in v),
    }
    if reducer not in reducers:
        raise KeyError(f"unknown reducer {reducer!r} (known: {', '.join(reducers)})")
    return reducers[reducer](values if reducer == "list" else numbers)


def _report(path: str) -> str:
    """A committed Markdown report, its headings one level deeper (it sits under the page's own)."""
    lines = (DOCS / path).read_text().splitlines()
    return "\n".join("#" + line if line.startswith("#") else line for line in lines).strip("\n") + "\n"


def _resume_position(path: str) -> str:
    """The seconds to find a resumed iteration's batch (benchmarks.resume_position), as a table."""
    result = json.loads((DOCS / path).read_text())
    env = result["environment"]
    lines = ["| processes x images | iteration | seconds to its batch |", "|---|---|---|"]
    for row in result["restore"]:
        lines.append(f"| {row['processes']} x {row['images_per_process']} | {row['iteration']:,} | {row['seconds']:.3f} |")
    lines += ["", f"Median of {result['repeats']}, {result['records']:,} records, on {env['cpu']} "
              f"({env['torch_threads']} threads, torch {env['torch']}), {result['date']}, commit {env['git_commit']}; "
              f"reading the records' orientation when the loader is built took {result['loader_build_seconds']:.2f} s. "
              "`python -m benchmarks.resume_position`."]  # fmt: skip
    return "\n".join(lines) + "\n"


# Block kinds that take an argument (the rest of the block's name), and those that take none.
WITH_ARGUMENT: Dict[str, Callable[[str], str]] = {
    "table": _table, "coco_ap": _coco_ap, "log_lines": _log_lines, "value": _value, "verdicts": _verdicts,
    "study_power": _study_power, "diagnosis": _diagnosis, "paired_steps": _paired_steps,
    "grad_shares": _grad_shares, "inlier_gradients": _inlier_gradients, "resume_position": _resume_position,
    "report": _report, "same_rows": _same_rows,
}  # fmt: skip
WITHOUT_ARGUMENT: Dict[str, Callable[[], str]] = {"table2_decomposition": _decomposition, "models": _models,
                                                  "demo_ap": _demo_ap}  # fmt: skip


def block_text(name: str) -> str:
    """The text of the block ``name`` (see the module docstring).

    Raises:
        KeyError: for a block kind this script does not know, naming the known ones.
    """
    kind, _, arg = name.partition(" ")
    if kind in WITH_ARGUMENT:
        return WITH_ARGUMENT[kind](arg)
    if kind in WITHOUT_ARGUMENT:
        return WITHOUT_ARGUMENT[kind]()
    known = [f"{k} ..." for k in WITH_ARGUMENT] + list(WITHOUT_ARGUMENT)
    raise KeyError(f"unknown generated block {name!r} (known: {', '.join(known)})")


def body_text(name: str, inline: bool) -> str:
    """The text between the comments of a block: one line inline, whole lines otherwise."""
    text = block_text(name)
    if inline:
        text = text.rstrip("\n")
        if "\n" in text:
            raise ValueError(f"the block {name!r} writes several lines: it cannot stand inside a line")
        return text
    return text if text.endswith("\n") else text + "\n"


def pages() -> List[Path]:
    """The pages whose blocks are written: the README, the guides in docs/ and the reports in docs/reports/."""
    return [REPO / "README.md", *sorted(DOCS.glob("*.md")), *sorted((DOCS / "reports").glob("*.md"))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs")
    args = parser.parse_args(argv)
    stale = []
    for page in pages():
        text = page.read_text()

        def fill(match: re.Match) -> str:
            body = body_text(match["name"], inline=match["newline"] is None)
            if body != match["body"]:
                stale.append(f"{page.relative_to(REPO)}: {match['name']}")
            return match["open"] + body + END

        new = BLOCK.sub(fill, text)
        if new != text and not args.check:
            page.write_text(new)
    for item in stale:
        print(("differs from the results: " if args.check else "rewritten: ") + item)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
