"""The ablation runner: one schedule for every config, a table and a chart, resume."""
import argparse
import json
import os
import subprocess
import sys

import pytest

from libra_rcnn.ablation import _changed_settings, _prepare, collect_result
from libra_rcnn.engine import InputError

from conftest import REPO, SMALL_OVERRIDES

TABLE2 = [f"configs/FashionScenes/ablation/{name}.yaml" for name in ("table2_a_baseline", "table2_d_balanced_l1")]
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
         "bbox/APm": 35.0, "bbox/APl": 40.0},
    ]  # fmt: skip
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "log.txt").write_text(
        "[11/21 19:16:19] d2.evaluation.evaluator INFO: Total inference pure compute time: 0:00:14 "
        "(0.074921 s / iter per device, on 1 devices)\n"
    )
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
    assert _changed_settings(stored, current) == ["SOLVER.BASE_LR"]
    assert _changed_settings(stored, stored) == []


def test_a_different_schedule_is_refused_before_training(tiny_scenes, tmp_path):
    data = ["DATASETS.TRAIN", "('tiny_scenes_train',)", "DATASETS.TEST", "('tiny_scenes_val',)"]
    configs = ["configs/FashionScenes/faster_rcnn_R_18_FPN_GN.yaml", "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"]
    args = argparse.Namespace(configs=[str(REPO / c) for c in configs], out=str(tmp_path), seed=7, opts=data)
    with pytest.raises(InputError, match=r"SOLVER\.MAX_ITER = 90000 differs from 800"):
        _prepare(args)
    args.configs = [str(REPO / configs[0])] * 2
    with pytest.raises(InputError, match="same name"):
        _prepare(args)


def run_ablation(*argv, datasets_root):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "libra_rcnn.ablation", *argv]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_runner_trains_tabulates_charts_and_skips_finished_configs(tiny_scenes, tmp_path):
    out = tmp_path / "ablation"
    done = run_ablation("--configs", *TABLE2, "--out", str(out), *TINY, datasets_root=tiny_scenes)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in (out / "ablation.md").read_text().splitlines() if line.startswith("| table2_")]
    assert [row.split(" | ")[0] for row in rows] == ["| table2_a_baseline", "| table2_d_balanced_l1"]
    assert rows[0].split(" | ")[2] == "+0.0"
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("table2_a_baseline", "table2_d_balanced_l1"):
        result = json.loads((out / name / "result.json").read_text())
        assert 0.0 <= result["AP"] <= 100.0 and result["s_per_iter"] > 0 and result["peak_memory_mib"] > 0
        assert result["s_per_image"] > 0
        assert result["device"] == "cpu"
        assert "SEED: 7" in (out / name / "config.yaml").read_text()
    stamps = [(out / n / "result.json").stat().st_mtime_ns for n in ("table2_a_baseline", "table2_d_balanced_l1")]

    again = run_ablation("--configs", *TABLE2, "--out", str(out), *TINY, datasets_root=tiny_scenes)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("not trained again") == 2
    assert [(out / n / "result.json").stat().st_mtime_ns for n in ("table2_a_baseline", "table2_d_balanced_l1")] == stamps

    changed = run_ablation("--configs", *TABLE2, "--out", str(out), *TINY, "SOLVER.BASE_LR", "0.001", datasets_root=tiny_scenes)
    assert changed.returncode == 2 and "was made with other settings" in changed.stderr
    assert "(SOLVER.BASE_LR)" in changed.stderr
