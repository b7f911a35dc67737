"""The targets of the benchmark, checked on the measured figures, and the Markdown report."""

from typing import List

# Targets (benchmarks/README.md): Libra / baseline ratios and the sampler's speed-up.
TRAIN_RATIO_MAX = 1.05
INFER_RATIO_MAX = 1.05
TRAIN_MEMORY_RATIO_MAX = 1.10
AUTHORS_RATIO_MAX = 1.0
SAMPLER_SPEEDUP_MIN = 10.0
SAMPLER_TARGET_BATCH = 8
FUSED_EQUAL_ATOL = 1e-5


def _fmt_ratio(x: float) -> str:
    return f"{x:.3f}x"


def check_targets(results: dict) -> List[dict]:
    """Every target with its measured figure, whether it is met, and by how much it is missed.

    Returns:
        list of dicts: ``target``, ``measured`` (text), ``met`` (bool, or None when it could
        not be measured here), ``margin`` (text: how far from the bar).
    """
    rows = []
    for pair in results.get("detectors", []):
        label = (f"{pair['libra_name']} / {pair['baseline_name']} ({pair['suite']}, {pair['device']}, "
                 f"{pair.get('precision', 'float32')}, batch {pair['batch_size']})")
        for key, unit, bar, what in (
            ("train_s", "train", TRAIN_RATIO_MAX, "training step"),
            ("infer_s", "infer", INFER_RATIO_MAX, "inference"),
        ):
            rows.append(_ratio_row(f"{what} {label}", pair, key, unit, bar))
        if pair["suite"] == "COCO size":
            ratio = pair["ratio"]["train_peak_mib"]
            rows.append(
                _row(
                    f"peak training memory {label} <= {TRAIN_MEMORY_RATIO_MAX:.2f}x",
                    _fmt_ratio(ratio),
                    ratio <= TRAIN_MEMORY_RATIO_MAX,
                    ratio - TRAIN_MEMORY_RATIO_MAX,
                    "x",
                )
            )
    authors = results.get("authors")
    if authors:
        for key, unit, what in (("train_s", "train", "training step"), ("infer_s", "infer", "inference")):
            rows.append(_ratio_row(f"{what} ours / mmdetection's Libra R-CNN R-50 (COCO size, cpu, same weights)",
                                   authors, key, unit, AUTHORS_RATIO_MAX))  # fmt: skip
    sampler_rows = [r for r in results.get("sampler", {}).get("rows", []) if r["batch"] == SAMPLER_TARGET_BATCH]
    for r in sampler_rows:
        if r["device"] == "cpu":
            target = (
                f"sampler >= {SAMPLER_SPEEDUP_MIN:.0f}x faster than mmdetection's, batch {SAMPLER_TARGET_BATCH}, cpu"
            )
            if "speedup_vs_mmdet" in r:
                s = r["speedup_vs_mmdet"]
                rows.append(_row(target, f"{s:.1f}x", s >= SAMPLER_SPEEDUP_MIN, SAMPLER_SPEEDUP_MIN - s, "x"))
            else:
                rows.append({"target": target, "measured": "mmdet not installed", "met": None, "margin": ""})
    gpu_rows = [r for r in results.get("sampler", {}).get("rows", []) if r["device"] != "cpu"]
    if gpu_rows:
        syncs = max(r["ours_paper"]["syncs"] for r in gpu_rows)
        rows.append(
            _row(
                "sampler: zero host-device synchronisations on the GPU",
                f"{syncs} (max over batches)",
                syncs == 0,
                syncs,
                "",
            )
        )
    else:
        rows.append({"target": "sampler: zero host-device synchronisations on the GPU", "measured": "no GPU",
                     "met": None, "margin": ""})  # fmt: skip
    for r in results.get("non_local", []):
        diff = r["max_abs_diff"]
        rows.append(
            _row(
                f"fused non-local equals the plain one to {FUSED_EQUAL_ATOL:g} ({r['device']}, batch {r['batch']})",
                f"max |diff| {diff:.1e}",
                diff <= FUSED_EQUAL_ATOL,
                diff - FUSED_EQUAL_ATOL,
                "",
            )
        )
    for name, outcome in results.get("tests", {}).items():
        rows.append({"target": f"accuracy unchanged: `{name}` passes", "measured": outcome["summary"],
                     "met": outcome["passed"], "margin": ""})  # fmt: skip
    return rows


def _ratio_row(what: str, result: dict, key: str, unit: str, bar: float) -> dict:
    """The target ``what <= bar`` on ``result["ratio"][key]``, its spread beside it (:func:`_spread`)."""
    ratio = result["ratio"][key]
    measured = _fmt_ratio(ratio) + _spread(result.get("paired_ratios", {}).get(unit),
                                           result.get("process_ratios", {}).get(key))  # fmt: skip
    return _row(f"{what} <= {bar:.2f}x", measured, ratio <= bar, ratio - bar, "x")


def _quartiles(ratios) -> str:
    """``Q1–Q3`` of the per-round ratios, their middle half; empty for fewer than four."""
    if not ratios or len(ratios) < 4:
        return ""
    r = sorted(ratios)
    return f"{r[(len(r) - 1) // 4]:.3f}–{r[(3 * (len(r) - 1) + 3) // 4]:.3f}"


def _spread(ratios, processes=None) -> str:
    """`` (rounds: Q1–Q3; processes: min–max)``: the middle half of the per-round ratios, the noise
    within a run, and, measured more than once with fresh processes, the range of the runs'
    ratios, the noise between runs; empty without them."""
    quartiles = _quartiles(ratios)
    parts = [f"rounds: {quartiles}"] if quartiles else []
    if processes and len(processes) > 1:
        parts.append(f"{len(processes)} processes: {min(processes):.3f}–{max(processes):.3f}")
    return f" ({'; '.join(parts)})" if parts else ""


def _row(target: str, measured: str, met: bool, excess: float, unit: str) -> dict:
    return {"target": target, "measured": measured, "met": bool(met),
            "margin": "" if met else f"missed by {excess:.3g}{unit}"}  # fmt: skip


def _mark(met) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def _ms(x: float) -> str:
    return f"{1000 * x:.2f}"


def to_markdown(results: dict) -> str:
    """The report: environment, targets, then one table per benchmark. Every number is from ``results``."""
    env, opts = results["environment"], results["options"]
    lines = [
        f"Measured by `{results['command']}` on {results['date']} (git {env['git_commit']}).",
        f"Hardware: {env['cpu']}, {env['cpu_cores']} cores (torch threads {env['torch_threads']}), "
        f"{env['memory_gib']} GiB; GPU: {env['gpu']}.",
        f"Versions: Python {env['python']}, torch {env['torch']}, Detectron2 {env['detectron2']}, "
        f"NumPy {env['numpy']}; project code: `{env['libra_rcnn']}`; reference: "
        + (", ".join(f"{k} {v}" for k, v in results.get("sampler", {}).get("reference", {}).items()) or "-")
        + ".",
        f"Load average (1, 5, 15 min) before: {results['load_before']}, after: {results['load_after']} "
        "(other processes on the machine).",
    ]
    if "cuda" not in results["devices"]:
        lines.append("no GPU: `torch.cuda.is_available()` is False here, so only the CPU was measured "
                     "(the same command measures the GPU too where there is one).")  # fmt: skip
    lines += ["", "**Targets**", "", "| target | measured | result |", "|---|---|---|"]
    for t in results["targets"]:
        lines.append(
            f"| {t['target']} | {t['measured']} | {_mark(t['met'])}{' (' + t['margin'] + ')' if t['margin'] else ''} |"
        )

    if results.get("detectors"):
        lines += [
            "",
            f"**Training step** (median of {opts['train_repeats']} steps after {opts['train_warmup']} warm-up, "
            f"COCO size {opts['coco_train_repeats']} after {opts['coco_train_warmup']}; the models alternate "
            "step by step; peak memory: CUDA tensors on a GPU, the process's resident set on the CPU)",
            "",
            "| device | precision | suite | baseline → Libra | batch, input | weights | baseline s/step | Libra s/step "
            "| ratio | baseline peak MiB | Libra peak MiB | ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in results["detectors"]:
            b, l, r = p["models"]["baseline"], p["models"]["libra"], p["ratio"]
            weights = "trained" if p["weights"]["libra"] != "random init" else "random init"
            if p["models"]["libra"].get("shared_entries"):
                weights += " (common modules shared)"
            lines.append(
                f"| {p['device']} | {p.get('precision', 'float32')} | {p['suite']} | {p['baseline_name']} → {p['libra_name']} "
                f"| {p['batch_size']} x {p['input_hw'][0]}x{p['input_hw'][1]} | {weights} "
                f"| {b['train_s']:.3f} | {l['train_s']:.3f} | {_fmt_ratio(r['train_s'])} "
                f"| {b['train_peak_mib']:.0f} | {l['train_peak_mib']:.0f} | {_fmt_ratio(r['train_peak_mib'])} |"
            )
        lines += [
            "",
            f"**Inference** (one image per call under `no_grad`, median of {opts['infer_repeats']} after "
            f"{opts['infer_warmup']} warm-up, COCO size {opts['coco_infer_repeats']} after "
            f"{opts['coco_infer_warmup']}; post-processing included)",
            "",
            "| device | precision | suite | baseline → Libra | input | baseline s/image | Libra s/image | ratio "
            "| baseline peak MiB | Libra peak MiB | ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in results["detectors"]:
            b, l, r = p["models"]["baseline"], p["models"]["libra"], p["ratio"]
            lines.append(
                f"| {p['device']} | {p.get('precision', 'float32')} | {p['suite']} | {p['baseline_name']} → {p['libra_name']} "
                f"| {p['input_hw'][0]}x{p['input_hw'][1]} "
                f"| {b['infer_s']:.4f} | {l['infer_s']:.4f} | {_fmt_ratio(r['infer_s'])} "
                f"| {b['infer_peak_mib']:.0f} | {l['infer_peak_mib']:.0f} | {_fmt_ratio(r['infer_peak_mib'])} |"
            )

    if results.get("flops"):
        lines += [
            "",
            "**Multiply-adds at inference**, COCO size (one 800x1333 image; Detectron2's `FlopCountAnalysis`, "
            "the non-local attention counted as its two matrix products; `benchmarks/flops.py`), G",
            "",
            "| baseline → Libra | baseline | Libra | Libra − baseline | of which the non-local block | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["flops"]:
            b, l = r["baseline"]["total"], r["libra"]["total"]
            refine = r["libra"]["modules"].get("backbone.refine", 0)
            lines.append(f"| {r['baseline_name']} → {r['libra_name']} | {b / 1e9:.2f} | {l / 1e9:.2f} "
                         f"| {(l - b) / 1e9:.2f} | {refine / 1e9:.2f} | {_fmt_ratio(r['ratio'])} |")  # fmt: skip
    authors = results.get("authors")
    if authors:
        o, t, d = authors["models"]["ours"], authors["models"]["mmdetection"], authors["detections"]
        same = (f"{d['ours']} and {d['theirs']} detections"
                + (f", boxes at most {d['max_box_diff_px']:.2g} px and scores {d['max_score_diff']:.1g} apart"
                   if "max_box_diff_px" in d else ""))  # fmt: skip
        lines += [
            "",
            f"**Libra R-CNN R-50, ours against mmdetection {t.get('mmdet', '')}'s** (`{authors['mmdet_config']}`, "
            f"its weights converted to `{authors['our_config']}`), 1 x {authors['input_hw'][0]}x"
            f"{authors['input_hw'][1]} on the CPU, the two alternating; the last inference: {same}",
            "",
            "| | mmdetection | ours | ours / mmdetection | rounds Q1–Q3 |",
            "|---|---|---|---|---|",
        ]
        for key, unit, what in (("train_s", "train", "training step, s"), ("infer_s", "infer", "inference, s/image")):
            lines.append(f"| {what} | {t[key]:.3f} | {o[key]:.3f} | {_fmt_ratio(authors['ratio'][key])} "
                         f"| {_quartiles(authors['paired_ratios'][unit])} |")  # fmt: skip

    sampler = results.get("sampler")
    if sampler:
        lines += [
            "",
            f"**RoI sampler**: 512 RoIs (25 % positives) per image from 2000 proposals and 1–100 GT boxes, "
            f"ms per batch (median of {opts['sampler_repeats']} after {opts['sampler_warmup']} warm-up); "
            "sampling only, given the matches; ours: the whole batch in one call; Detectron2's random and "
            "mmdetection's IoU-balanced samplers: per image",
            "",
            "| device | images | GT boxes / image | positives / image | ours (paper bins) | ours (mmdet bins) "
            "| Detectron2 random | mmdetection | ours vs mmdetection | ours vs Detectron2 | syncs: ours / D2 / mmdet |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sampler["rows"]:
            mm = r.get("mmdet")
            syncs = "-"
            if "syncs" in r["ours_paper"]:
                syncs = f"{r['ours_paper']['syncs']} / {r['detectron2']['syncs']} / {mm['syncs'] if mm else '-'}"
            lines.append(
                f"| {r['device']} | {r['batch']} | {r['gts_per_image']:.1f} | {r['positives_per_image']:.0f} "
                f"| {_ms(r['ours_paper']['s'])} | {_ms(r['ours_mmdet']['s'])} | {_ms(r['detectron2']['s'])} "
                f"| {_ms(mm['s']) if mm else 'not installed'} "
                f"| {str(round(r['speedup_vs_mmdet'], 1)) + 'x' if mm else '-'} "
                f"| {r['speedup_vs_detectron2']:.2f}x | {syncs} |"
            )

    if results.get("bfp"):
        lines += [
            "",
            f"**Balanced feature pyramid** at COCO size (P2–P6 of an 800 x 1344 input, 256 channels, refine "
            f"level P4; the FPN's levels given), forward + backward, median of {opts['bfp_repeats']} after "
            f"{opts['bfp_warmup']} warm-up; memory autograd keeps for the backward pass (input levels excluded)",
            "",
            "| device | refine | batch | fwd + bwd s | saved for backward MiB | CUDA peak above inputs MiB |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["bfp"]:
            cuda = f"{r['cuda_peak_above_inputs_mib']:.0f}" if "cuda_peak_above_inputs_mib" in r else "-"
            lines.append(
                f"| {r['device']} | {r['refine_type']} | {r['batch']} | {r['fwd_bwd_s']:.3f} "
                f"| {r['saved_mib']:.0f} | {cuda} |"
            )
    if results.get("non_local"):
        lines += [
            "",
            "**Non-local block** at P4 (256 x 50 x 84 = 4200 positions): explicit matmuls + softmax (plain) vs "
            "`scaled_dot_product_attention(scale=1)` (fused, what the block runs), seconds (median)",
            "",
            "| device | batch | plain fwd | fused fwd | plain fwd + bwd | fused fwd + bwd | max abs diff "
            "| max grad diff (relative) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results["non_local"]:
            lines.append(
                f"| {r['device']} | {r['batch']} | {r['plain_fwd_s']:.3f} | {r['fused_fwd_s']:.3f} "
                f"| {r['plain_fwd_bwd_s']:.3f} | {r['fused_fwd_bwd_s']:.3f} | {r['max_abs_diff']:.1e} "
                f"| {r['max_grad_diff_rel']:.1e} |"
            )
    return "\n".join(lines) + "\n"
