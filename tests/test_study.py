"""A study of one's own config (python -m libra_rcnn.ablation --study, docs/own_data.md): the
derived rows, each one switch from the row above; the table, verdicts and diagnosis of a short study
on a small COCO export; bad studies stopped in one line."""
import argparse
import json
import math
import os
import subprocess
import sys

import pytest

from libra_rcnn.ablation import config_settings
from libra_rcnn.ablation.study import detectable_difference, study_rows, verdicts
from libra_rcnn.config import build_config

from conftest import REPO, own_export_project

LIBRA = "configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml"
RPN_OFF = {"MODEL.PROPOSAL_GENERATOR.NAME": "RPN", "MODEL.LIBRA.RPN.NEG_POS_UB": -1.0}


def settings(config, opts=()):
    return config_settings(build_config(argparse.Namespace(config_file=str(REPO / config), opts=list(opts))))


def changed(a: dict, b: dict) -> dict:
    return {k: v for k, v in b.items() if a[k] != v and k != "OUTPUT_DIR"}


def test_table2_rows_of_the_fashion_scenes_config_switch_one_component_each():
    rows = study_rows("table2", build_config(argparse.Namespace(config_file=str(REPO / LIBRA), opts=[])))
    assert [name for name, _, _ in rows] == ["a_baseline", "b_iou_sampling", "c_bfp", "d_balanced_l1", "e_rpn_bound"]
    derived = [settings(LIBRA, opts) for _, _, opts in rows]
    steps = [changed(a, b) for a, b in zip(derived, derived[1:])]
    assert steps == [
        {"MODEL.ROI_HEADS.NAME": "LibraROIHeads"},
        {"MODEL.BACKBONE.NAME": "build_bfp_backbone"},
        {"MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE": "balanced_l1"},
        {"MODEL.PROPOSAL_GENERATOR.NAME": "LibraRPN", "MODEL.LIBRA.RPN.NEG_POS_UB": 5.0},
    ]
    # Rows a-d are Table 2's L1 family as committed, row e the config itself.
    for (name, _, _), row in zip(rows, derived):
        config = LIBRA if name == "e_rpn_bound" else f"configs/FashionScenes/ablation/table2_l1_{name}.yaml"
        config = config.replace("table2_l1_c_bfp", "table2_l1_c_iou_sampling_bfp")
        assert changed(settings(config), row) == {}, name


def test_libra_retinanet_and_sweep_rows():
    cfg = build_config(argparse.Namespace(config_file=str(REPO / "configs/FashionScenes/libra_retinanet_R_18_FPN_GN.yaml"),
                                          opts=[]))  # fmt: skip
    rows = study_rows("libra_retinanet", cfg)
    derived = [settings("configs/FashionScenes/libra_retinanet_R_18_FPN_GN.yaml", opts) for _, _, opts in rows]
    assert changed(settings("configs/FashionScenes/retinanet_R_18_FPN_GN.yaml"), derived[0]) == {}
    assert [changed(a, b) for a, b in zip(derived, derived[1:])] == [
        {"MODEL.BACKBONE.NAME": "build_bfp_backbone"},
        {"MODEL.META_ARCHITECTURE": "LibraRetinaNet", "MODEL.RETINANET.BBOX_REG_LOSS_TYPE": "balanced_l1"},
    ]
    sweep = study_rows("sweep", cfg, ["MODEL.LIBRA.SAMPLER.NUM_BINS", "2", "3", "5"])
    assert [(name, opts) for name, _, opts in sweep] == [
        ("num_bins_2", ["MODEL.LIBRA.SAMPLER.NUM_BINS", "2"]), ("num_bins_3", ["MODEL.LIBRA.SAMPLER.NUM_BINS", "3"]),
        ("num_bins_5", ["MODEL.LIBRA.SAMPLER.NUM_BINS", "5"])]  # fmt: skip


def test_verdicts_and_the_step_these_seeds_can_find():
    def row(mean, std, beyond, n=3):
        return {"seeds": [7, 8, 9][:n], "step_AP": {"mean": mean, "std": std, "n": n, "beyond_noise": beyond}}

    lines = verdicts([row(0, 0, None), row(1.2, 0.3, True), row(-0.9, 0.2, True), row(0.4, 1.0, False)],
                     ["base", "sampler", "pyramid", "loss"])  # fmt: skip
    assert lines[0] == "sampler: helps, +1.2 ± 0.3 AP (paired t-test at 5 %, seeds 7, 8, 9)"
    assert lines[1].startswith("pyramid: hurts, -0.9 ± 0.2 AP")
    assert lines[2].startswith("loss: no difference beyond noise at seeds 7, 8, 9 (+0.4 ± 1.0 AP)")
    # 80 % power of a two-sided paired t-test, 3 seeds, std 1: the noncentral t gives 3.2 / sqrt(3) * ... ~ 3.1 AP;
    # more seeds find smaller steps.
    three, ten = detectable_difference(1.0, 3), detectable_difference(1.0, 10)
    assert 2.5 < three < 4.5 and 0.8 < ten < 1.1 and math.isnan(detectable_difference(1.0, 1))


def study(*argv, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "libra_rcnn.ablation", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip


SHORT = ["SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "1000", "DATALOADER.NUM_WORKERS", "0",
         "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
         "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64"]  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    own_export_project(root, "mine", LIBRA, num_train=12, num_val=4, seed=2)
    return root


def test_a_short_study_writes_its_table_verdicts_and_diagnosis(project):
    proc = study("--study", "table2", "--config-file", "mine.yaml", "--seeds", "7", "8", "--out", "study", "--diagnose",
                 *SHORT, cwd=project)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = project / "study"
    assert "[table2 1/10] a_baseline seed 7: iteration 3/3" in proc.stdout  # progress, per run
    text = (out / "table2.md").read_text()
    assert [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ") and "seeds" not in line
            and "---" not in line] == ["| a_baseline", "| b_iou_sampling", "| c_bfp", "| d_balanced_l1", "| e_rpn_bound"]  # fmt: skip
    for what in ("IoU-balanced sampling", "the balanced feature pyramid", "the balanced L1 loss", "the authors' RPN sampling"):
        assert f"- {what}: " in text
    figures = json.loads((out / "table2.json").read_text())
    assert len(figures["verdicts"]) == 4 and all(len(row["seeds"]) == 2 for row in figures["rows"])
    for picture in ("table2.png", "diagnosis_data.png", "diagnosis_negatives.png", "diagnosis_gradients.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG", picture
    diagnosis = (out / "diagnosis.md").read_text()
    assert "objects per image" in diagnosis and "hard negatives" in diagnosis and "box gradient" in diagnosis
    assert proc.stdout.count("[diagnosis] ") == 5


@pytest.mark.parametrize(
    "argv,message",
    [(["--study", "table3", "--config-file", "mine.yaml"], "argument --study: invalid choice: 'table3'"),
     (["--study", "table2", "--config-file", f"{REPO}/configs/FashionScenes/fsaf_R_18_FPN_GN.yaml"],
      "--study table2 derives Faster R-CNN rows and MODEL.META_ARCHITECTURE is 'FSAF'"),
     (["--study", "libra_retinanet", "--config-file", "mine.yaml"],
      "--study libra_retinanet derives RetinaNet rows and MODEL.META_ARCHITECTURE is 'GeneralizedRCNN'"),
     (["--study", "sweep", "--config-file", "mine.yaml", "--sweep", "MODEL.LIBRA.SAMPLER.NUM_BINS", "3"],
      "--study sweep needs --sweep KEY V1 V2")],
)  # fmt: skip
def test_a_bad_study_stops_at_once_in_one_line(project, argv, message):
    proc = study(*argv, "--out", "never", cwd=project)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "error: " in line]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert not (project / "never").exists()
