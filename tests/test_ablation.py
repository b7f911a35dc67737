"""The ablation runner: one schedule for every config, a table and a chart, resume."""
import argparse
import json
import subprocess
import sys

import pytest

from libra_rcnn.ablation import collect_result, paired_difference, summarize, welch_difference, write_table
from libra_rcnn.ablation.records import changed_settings
from libra_rcnn.ablation.runner import _prepare
from libra_rcnn.ablation.stats import critical_t
from libra_rcnn.config import InputError

from conftest import REPO, SMALL_OVERRIDES, train_net_env

TABLE2 = [f"configs/FashionScenes/ablation/{name}.yaml" for name in ("table2_l1_a_baseline", "table2_l1_d_balanced_l1")]
TINY = [
    *SMALL_OVERRIDES,
    "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.MAX_ITER", "3",
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
]  # fmt: skip


def test_collect_result_counts_a_resumed_iteration_once(tmp_path):
    records = [
        {"iteration": 19, "time": 9.0, "peak_memory_mib": 100.0},
        {"iteration": 39, "time": 0.5, "peak_memory_mib": 120.0},
        {"iteration": 59, "time": 0.7, "peak_memory_mib": 130.0},  # the run was killed after this
        {"iteration": 59, "time": 0.6, "peak_memory_mib": 110.0},  # resumed: the same iteration again
        {"iteration": 79, "time": 0.4, "peak_memory_mib": 115.0},
        {"iteration": 79, "bbox/AP": 31.5, "bbox/AP50": 50.0, "bbox/AP75": 33.0, "bbox/APs": 20.0,
         "bbox/APm": 35.0, "bbox/APl": 40.0, "inference/s_per_image": 0.074921},
    ]  # fmt: skip
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = collect_result(str(tmp_path))
    assert result["AP"] == 31.5 and result["APl"] == 40.0
    assert result["s_per_image"] == 0.074921
    assert result["s_per_iter"] == 0.5  # median of 0.5, 0.6, 0.4: the first window and the replaced record left out
    assert result["peak_memory_mib"] == 120.0  # the killed process's record was replaced by the resumed one


def test_collect_result_without_evaluation_is_an_error(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"iteration": 0, "time": 1.0}) + "\n")
    with pytest.raises(RuntimeError, match="no bbox/AP"):
        collect_result(str(tmp_path))


def test_settings_compare_only_keys_both_sides_have():
    stored = {"SOLVER.BASE_LR": 0.02, "MODEL.LIBRA.BFP.REFINE_TYPE": "non_local", "OLD.KEY": 1}
    current = {"SOLVER.BASE_LR": 0.01, "MODEL.LIBRA.BFP.REFINE_TYPE": "non_local", "MODEL.LIBRA.NEW.KEY": 2}
    assert changed_settings(stored, current) == ["SOLVER.BASE_LR"]
    assert changed_settings(stored, stored) == []
    moved = {"OUTPUT_DIR": "/elsewhere/run", "SOLVER.BASE_LR": 0.02}
    assert changed_settings({"OUTPUT_DIR": "out/run", "SOLVER.BASE_LR": 0.02}, moved) == []


def test_a_different_schedule_is_refused_before_training(tiny_scenes, tmp_path):
    data = ["DATASETS.TRAIN", "('tiny_scenes_train',)", "DATASETS.TEST", "('tiny_scenes_val',)"]
    configs = ["configs/FashionScenes/faster_rcnn_R_18_FPN_GN.yaml", "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"]
    args = argparse.Namespace(configs=[str(REPO / c) for c in configs], study=None, config_file=None, sweep=[],
                              out=str(tmp_path), seeds=[7], opts=data)  # fmt: skip
    with pytest.raises(InputError, match=r"SOLVER\.MAX_ITER = 90000 differs from 800"):
        _prepare(args)
    args.configs = [str(REPO / configs[0])] * 2
    with pytest.raises(InputError, match="same name"):
        _prepare(args)
    args.configs, args.seeds = [str(REPO / configs[0])], [7, 7]
    with pytest.raises(InputError, match="names a seed twice"):
        _prepare(args)


def test_critical_t_values_match_the_printed_tables():
    # Two-sided 95 % critical values of Student's t (any statistics textbook's table).
    for df, value in ((1, 12.706), (2, 4.303), (3, 3.182), (5, 2.571), (10, 2.228), (30, 2.042)):
        assert critical_t(df) == pytest.approx(value, abs=5e-4)


def test_paired_difference_by_hand():
    reference = {7: 34.0, 8: 34.5, 9: 34.0}
    # Differences 2.0, 0.5, 3.0: mean 11/6, sample std sqrt(((1/6)^2 + (4/3)^2 + (7/6)^2) / 2).
    d = paired_difference({7: 36.0, 8: 35.0, 9: 37.0}, reference)
    assert d["n"] == 3 and d["mean"] == pytest.approx(11 / 6)
    assert d["std"] == pytest.approx(((1 / 6) ** 2 + (4 / 3) ** 2 + (7 / 6) ** 2) ** 0.5 / 2**0.5)
    assert d["beyond_noise"] is False  # t = 2.52 < 4.303
    # A steady gain: differences 1.0, 1.1, 0.9, t = 17.3 > 4.303.
    steady = paired_difference({7: 35.0, 8: 35.6, 9: 34.9}, reference)
    assert steady["mean"] == pytest.approx(1.0) and steady["beyond_noise"] is True
    # Only the seeds both have are paired; one pair has no std and no test.
    single = paired_difference({7: 35.0, 10: 30.0}, reference)
    assert single["n"] == 1 and single["mean"] == 1.0 and single["beyond_noise"] is None


def test_summary_table_gives_mean_and_sample_std(tmp_path):
    def run(name, seed, ap):
        figures = dict(AP=ap, AP50=ap + 20, AP75=ap + 5, APs=ap, APm=ap, APl=ap)
        return dict(figures, name=name, seed=seed, device="cpu", s_per_iter=0.5, peak_memory_mib=1000, s_per_image=0.1)

    results = [run("base", 7, 30.0), run("base", 8, 32.0), run("libra", 7, 33.0), run("libra", 8, 34.0),
               run("more", 7, 35.0), run("more", 8, 36.0)]  # fmt: skip
    summary = summarize(results)
    assert [row["name"] for row in summary] == ["base", "libra", "more"]
    assert summary[0]["AP"] == {"mean": 31.0, "std": pytest.approx(2**0.5)}  # sample std of 30, 32
    assert summary[1]["delta_AP"]["mean"] == 2.5 and summary[1]["delta_AP"]["std"] == pytest.approx(0.5 * 2**0.5)
    # Step to the row above: +2 at both seeds (std 0), beyond noise; to the first row +4.5 ± 0.7.
    assert summary[2]["step_AP"]["mean"] == 2.0 and summary[2]["step_AP"]["std"] == 0.0
    assert summary[2]["step_AP"]["beyond_noise"] is True and summary[1]["step_AP"] == summary[1]["delta_AP"]
    text = write_table(summary, str(tmp_path / "t.md"))
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith(("| base", "| libra", "| more"))]
    assert rows[0][1:7] == ["7, 8", "31.0 ± 1.4", "+0.0 ± 0.0", "—", "+0.0 ± 0.0", "—"]
    assert rows[1][1:8] == ["7, 8", "33.5 ± 0.7", "+2.5 ± 0.7", "no", "+2.5 ± 0.7", "no", "53.5 ± 0.7"]
    assert rows[2][1:8] == ["7, 8", "35.5 ± 0.7", "+4.5 ± 0.7", "no", "+2.0 ± 0.0", "yes", "55.5 ± 0.7"]


def run_ablation(*argv, datasets_root):
    env = train_net_env(datasets_root)
    cmd = [sys.executable, "-m", "libra_rcnn.ablation", *argv]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_runner_trains_every_seed_tabulates_charts_and_skips_finished_runs(tiny_scenes, tmp_path):
    out = tmp_path / "ablation"
    names = ("table2_l1_a_baseline", "table2_l1_d_balanced_l1")
    runs = [out / n / f"seed_{seed}" for seed in (7, 8) for n in names]
    done = run_ablation("--configs", *TABLE2, "--seeds", "7", "8", "--out", str(out), *TINY, datasets_root=tiny_scenes)
    assert done.returncode == 0, done.stderr[-3000:]
    # Seed by seed: both configs at seed 7 train before either at seed 8.
    trained = [line.split("--config-file ")[1].split()[0] for line in done.stdout.splitlines() if "libra_rcnn.engine" in line]
    assert trained == TABLE2 * 2
    rows = [line for line in (out / "ablation.md").read_text().splitlines() if line.startswith("| table2_")]
    assert [row.split(" | ")[:2] for row in rows] == [["| table2_l1_a_baseline", "7, 8"], ["| table2_l1_d_balanced_l1", "7, 8"]]
    assert rows[0].split(" | ")[3].startswith("+0.0 ± 0.0")
    assert "± " in rows[1].split(" | ")[2]  # two seeds: a mean and a std
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figures = json.loads((out / "ablation.json").read_text())
    assert [sorted(row["per_seed"]["AP"]) for row in figures["rows"]] == [["7", "8"], ["7", "8"]]
    for run, seed in zip(runs, (7, 7, 8, 8)):
        result = json.loads((run / "result.json").read_text())
        assert 0.0 <= result["AP"] <= 100.0 and result["s_per_iter"] > 0 and result["peak_memory_mib"] > 0
        assert result["s_per_image"] > 0
        assert result["device"] == "cpu" and result["seed"] == seed
        assert f"SEED: {seed}" in (run / "config.yaml").read_text()
    stamps = [(run / "result.json").stat().st_mtime_ns for run in runs]

    # A third seed trains only the two new runs.
    more = run_ablation("--configs", *TABLE2, "--seeds", "7", "8", "9", "--out", str(out), *TINY, datasets_root=tiny_scenes)
    assert more.returncode == 0, more.stderr[-3000:]
    assert more.stdout.count("not trained again") == 4 and more.stdout.count("libra_rcnn.engine") == 2
    assert [(run / "result.json").stat().st_mtime_ns for run in runs] == stamps
    assert all((out / n / "seed_9" / "result.json").is_file() for n in names)

    changed = run_ablation("--configs", *TABLE2, "--out", str(out), *TINY, "SOLVER.BASE_LR", "0.001", datasets_root=tiny_scenes)
    assert changed.returncode == 2 and "was made with other settings" in changed.stderr
    assert "(SOLVER.BASE_LR)" in changed.stderr


def test_welch_difference_by_hand():
    # means 36 and 33.1667, sample variances 1 and 1.58333: se = sqrt(1/3 + 1.58333/3) = 0.92796,
    # df = 0.86111^2 / ((1/3)^2 / 2 + (0.52778)^2 / 2) = 3.806, t(0.975, 3.806) = 2.833 (t tables, 1/df
    # interpolation: 2.838): the bound 2.833 * 0.928 = 2.63 < 2.83, beyond noise.
    d = welch_difference([36.0, 35.0, 37.0], [33.0, 32.0, 34.5])
    assert d["mean"] == pytest.approx(2.83333, abs=1e-5) and d["se"] == pytest.approx(0.92796, abs=1e-5)
    assert d["df"] == pytest.approx(3.806, abs=1e-3) and d["beyond_noise"] is True
    assert critical_t(3.806) == pytest.approx(2.838, abs=0.006)  # between t(3) 3.182 and t(4) 2.776
    close = welch_difference([36.0, 35.0, 37.0], [35.5, 34.0, 36.5])
    assert close["mean"] == pytest.approx(0.66667, abs=1e-5) and close["beyond_noise"] is False
    assert welch_difference([36.0], [35.0, 34.0])["beyond_noise"] is None
