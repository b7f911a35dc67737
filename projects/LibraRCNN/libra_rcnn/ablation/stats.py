"""Statistics of an ablation: mean ± sample std over seeds, and the differences between rows with
their t-tests (paired by seed within one framework, Welch's between two)."""
import math
import statistics
from typing import Dict, List, Optional, Sequence

from scipy import stats

from .records import METRICS

__all__ = ["mean_std", "critical_t", "paired_difference", "welch_difference", "summarize"]


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; NaN for one value, and both
    NaN when a value is: a figure a run did not record)."""
    values = [float(v) for v in values]
    if any(math.isnan(v) for v in values):
        return {"mean": math.nan, "std": math.nan}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else math.nan}


def critical_t(df: float) -> float:
    """The critical value of a two-sided t-test at 5 %: the 0.975 quantile of Student's t with
    ``df`` degrees of freedom (not necessarily whole; ``scipy.stats.t``)."""
    return float(stats.t.ppf(0.975, df))


def paired_difference(values: Dict[int, float], reference: Dict[int, float]) -> Dict[str, object]:
    """``values - reference`` paired by seed (seed -> metric), over the seeds both have.

    Returns:
        dict with ``mean`` and ``std`` (sample, n - 1) of the per-seed differences, ``n``, and
        ``beyond_noise``: True when a two-sided paired t-test at the 5 % level rejects a zero
        mean (|mean| > t(0.975, n - 1) * std / sqrt(n)); None when n < 2.
    """
    seeds = sorted(values.keys() & reference.keys())
    diffs = [values[k] - reference[k] for k in seeds]
    out: Dict[str, object] = {"n": len(diffs), **mean_std(diffs)} if diffs else {"n": 0, "mean": float("nan"), "std": float("nan")}
    beyond: Optional[bool] = None
    if len(diffs) > 1:
        bound = critical_t(len(diffs) - 1) * out["std"] / math.sqrt(len(diffs))
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
    sa, sb = mean_std(a), mean_std(b)
    out["mean"] = sa["mean"] - sb["mean"]
    if len(a) < 2 or len(b) < 2:
        return {**out, "se": float("nan"), "df": float("nan"), "beyond_noise": None}
    va, vb = sa["std"] ** 2 / len(a), sb["std"] ** 2 / len(b)
    out["se"] = math.sqrt(va + vb)
    if out["se"] == 0.0:
        return {**out, "df": float("inf"), "beyond_noise": out["mean"] != 0.0}
    out["df"] = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    out["beyond_noise"] = abs(out["mean"]) > critical_t(out["df"]) * out["se"]
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
            row[key] = mean_std(row["per_seed"][key].values())
        row["delta_AP"] = paired_difference(row["per_seed"]["AP"], summary[0]["per_seed"]["AP"])
        row["step_AP"] = paired_difference(row["per_seed"]["AP"], summary[max(k - 1, 0)]["per_seed"]["AP"])
    return summary
