"""End to end: train on a tiny scenes split, checkpoint, evaluate with train_net.py --eval-only."""
import pytest
import torch

from libra_rcnn.config import build_config
from libra_rcnn.engine import Trainer, main

from conftest import CONFIG, REPO, TINY, TINY_CLI, args_for, train_net


@pytest.fixture(scope="module")
def trained(tiny_scenes, tmp_path_factory):
    """30 iterations on the tiny split, in process; returns (output dir, per-iteration losses)."""
    out = tmp_path_factory.mktemp("train")
    args = args_for(
        "--config-file", str(REPO / CONFIG), *TINY, "SOLVER.MAX_ITER", "30", "SOLVER.WARMUP_ITERS", "5",
        "SOLVER.BASE_LR", "0.01", "SOLVER.CHECKPOINT_PERIOD", "1000", "OUTPUT_DIR", str(out),
    )
    trainer = Trainer(build_config(args))
    trainer.resume_or_load(resume=False)
    trainer.train()
    return out, trainer.storage.history("total_loss").values()


def test_training_decreases_the_loss_and_writes_a_checkpoint(trained):
    out, history = trained
    losses = [value for value, _ in history]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    assert (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"


def test_training_draws_its_loss_curves_from_metrics_json(trained):
    out, _ = trained
    assert (out / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "loss_curves.png").stat().st_mtime >= (out / "metrics.json").stat().st_mtime


def test_eval_only_returns_coco_metrics(trained):
    out, _ = trained
    args = args_for("--config-file", str(REPO / CONFIG), "--eval-only", *TINY,
                    "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(out / "eval"))
    results = main(args)
    bbox = results["bbox"]  # DefaultTrainer.test unwraps the dict of a single dataset
    assert set(bbox) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(v == v for v in (bbox["AP"], bbox["AP50"]))  # numbers, not NaN


def test_train_net_cli_eval_only_prints_the_ap_table(trained, tiny_scenes):
    out, _ = trained
    proc = train_net("--config-file", CONFIG, "--eval-only", *TINY_CLI,
                     "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(out / "cli"),
                     datasets_root=tiny_scenes)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    assert "Running on the CPU" in log or torch.cuda.is_available()


@pytest.mark.parametrize(
    "argv,message",
    [(["--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", "/nonexistent/model.pth"],
      "MODEL.WEIGHTS file /nonexistent/model.pth not found"),
     (["--config-file", "configs/nope.yaml"], "config file configs/nope.yaml not found"),
     (["--config-file", CONFIG, "DATASETS.TRAIN", "('no_such_set',)"], "dataset 'no_such_set' is not registered"),
     (["--config-file", CONFIG, "MODEL.LIBRA.BFP.REFINE_TYPE", "gcb"], "MODEL.LIBRA.BFP.REFINE_TYPE = 'gcb'"),
     (["--config-file", CONFIG, "MODEL.LIBRA.NO_SUCH_KEY", "1"], "Non-existent key: MODEL.LIBRA.NO_SUCH_KEY")],
)
def test_bad_input_is_a_one_line_error(argv, message, tiny_scenes):
    proc = train_net(*argv, datasets_root=tiny_scenes)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_missing_dataset_files_name_the_file(tmp_path):
    proc = train_net("--config-file", CONFIG, datasets_root=tmp_path)
    assert proc.returncode == 2
    assert f"annotation file {tmp_path}/fashion_scenes/annotations/instances_train.json not found" in proc.stderr


def test_missing_base_config_names_the_file(tmp_path):
    config = tmp_path / "child.yaml"
    config.write_text('_BASE_: "missing-base.yaml"\n')
    proc = train_net("--config-file", str(config), datasets_root=tmp_path)
    assert proc.returncode == 2 and "missing-base.yaml" in proc.stderr and "Traceback" not in proc.stderr
