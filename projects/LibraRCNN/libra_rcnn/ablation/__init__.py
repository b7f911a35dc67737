"""Ablations over seeds: train a list of configs once per seed, then tabulate and chart them with
paired t-tests (``python -m libra_rcnn.ablation``; :mod:`.runner`, :mod:`.records`,
:mod:`.stats`, :mod:`.report`)."""
from .records import METRICS, RESULT_FILE, collect_result, config_settings
from .report import hardware, plot_results, write_table
from .runner import SCHEDULE_KEYS, main, run_ablation
from .stats import mean_std, paired_difference, summarize, welch_difference

__all__ = [
    "SCHEDULE_KEYS",
    "METRICS",
    "RESULT_FILE",
    "config_settings",
    "collect_result",
    "mean_std",
    "paired_difference",
    "welch_difference",
    "summarize",
    "write_table",
    "plot_results",
    "hardware",
    "run_ablation",
    "main",
]
