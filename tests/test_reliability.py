"""Reliability: kill and resume, atomic checkpoints, determinism, bad data, NaN, two processes."""
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

import libra_rcnn.engine.checkpoint
from libra_rcnn import FASHION_MNIST_CLASSES
from libra_rcnn.engine.checkpoint import AtomicCheckpointer
from libra_rcnn.data.checks import DatasetError
from libra_rcnn.config import InputError, build_config
from libra_rcnn.engine import Trainer, check_inputs, truncate_metrics

from conftest import CONFIG, REPO, TINY, TINY_CLI, args_for, train_net, train_net_env


def tiny_cfg(out, *overrides):
    return build_config(args_for("--config-file", str(REPO / CONFIG), *TINY, "OUTPUT_DIR", str(out), *overrides))


def load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)  # our own file: optimizer state included


def metrics_lines(out):
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]


def training_iterations(out):
    """Iterations of metrics.json's training lines (those holding a loss), in file order."""
    return [m["iteration"] for m in metrics_lines(out) if "total_loss" in m]


# --- kill and resume -------------------------------------------------------------------


def test_sigkill_between_checkpoints_then_resume_continues_and_logs_each_iteration_once(tiny_scenes, tmp_path):
    out = tmp_path / "run"
    argv = ["--resume", "--config-file", CONFIG, *TINY_CLI, "SOLVER.MAX_ITER", "80",
            "SOLVER.CHECKPOINT_PERIOD", "30", "OUTPUT_DIR", str(out)]  # fmt: skip
    env = train_net_env(tiny_scenes)
    proc = subprocess.Popen([sys.executable, str(REPO / "train_net.py"), *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    # Kill once iteration 39 is logged: after the checkpoint of iteration 29, before that of 59.
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if (out / "metrics.json").is_file() and 39 in training_iterations(out):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert (out / "last_checkpoint").read_text() == "model_0000029.pth"
    assert 39 in training_iterations(out) and 59 not in training_iterations(out)

    resumed = train_net(*argv, datasets_root=tiny_scenes)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Starting training from iteration 30" in resumed.stdout + resumed.stderr
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert training_iterations(out) == [19, 39, 59, 79]
    iterations = [m["iteration"] for m in metrics_lines(out)]
    assert iterations == sorted(iterations) and "bbox/AP" in metrics_lines(out)[-1]
    assert load_checkpoint(out / "model_final.pth")["iteration"] == 79


def test_truncate_metrics_drops_resumed_iterations_and_a_torn_line(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": 19, "loss": 1}\n{"iteration": 39, "loss": 2}\n{"iteration": 59, "lo')
    assert truncate_metrics(str(path), 60) == 2
    assert path.read_text() == '{"iteration": 19, "loss": 1}\n{"iteration": 39, "loss": 2}\n'
    assert truncate_metrics(str(path), 30) == 1
    assert path.read_text() == '{"iteration": 19, "loss": 1}\n'
    assert truncate_metrics(str(tmp_path / "missing.json"), 5) == 0


def test_interrupted_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000009", iteration=9)
    before = (tmp_path / "model_0000009.pth").read_bytes()

    def killed_mid_write(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # what a signal during the write raises

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000009", iteration=19)  # overwrite the same file
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000019", iteration=19)
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]  # no temporary files left
    assert (tmp_path / "model_0000009.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    restored = torch.nn.Linear(3, 2)
    assert AtomicCheckpointer(restored, str(tmp_path)).resume_or_load("", resume=True)["iteration"] == 9
    assert torch.equal(restored.weight, model.weight)


def test_atomic_writes_leave_other_modes_and_remote_paths_to_the_path_manager(tmp_path):
    calls = []

    class Recorder:
        def open(self, path, mode="r", **kwargs):
            calls.append((path, mode))
            return open(os.devnull, mode)

        def exists(self, path):
            return "exists"

    writes = libra_rcnn.engine.checkpoint.AtomicWrites(Recorder())
    with writes.open(str(tmp_path / "tag"), "w") as f:
        f.write("x")
    writes.open("s3://bucket/tag", "w").close()
    writes.open(str(tmp_path / "tag"), "r").close()
    assert (tmp_path / "tag").read_text() == "x"
    assert calls == [("s3://bucket/tag", "w"), (str(tmp_path / "tag"), "r")]
    assert writes.exists("anything") == "exists"


# --- determinism -----------------------------------------------------------------------


def losses_of_a_short_run(out, seed=7, iterations=6):
    cfg = tiny_cfg(out, "SEED", str(seed), "SOLVER.MAX_ITER", str(iterations), "TEST.EVAL_PERIOD", "0",
                   "DATASETS.TEST", "()")  # fmt: skip
    seed_all_rng(cfg.SEED)  # what default_setup does with SEED
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return [v for v, _ in trainer.storage.history("total_loss").values()]


def test_same_seed_gives_identical_losses_on_the_cpu(tiny_scenes, tmp_path):
    first = losses_of_a_short_run(tmp_path / "a")
    second = losses_of_a_short_run(tmp_path / "b")
    other_seed = losses_of_a_short_run(tmp_path / "c", seed=8)
    assert len(first) == 6 and first == second
    assert other_seed != first


def test_a_seeded_sampling_generator_fixes_the_sampled_rois(tiny_scenes, tmp_path):
    cfg = tiny_cfg(tmp_path)
    trainer = Trainer(cfg)
    model = trainer.model
    batch = next(iter(trainer.data_loader))
    targets = [x["instances"] for x in batch]
    with EventStorage():
        images = model.preprocess_image(batch)
        proposals, _ = model.proposal_generator(images, model.backbone(images.tensor), targets)

    def sample(seed):
        torch.manual_seed(seed * 100)  # a different global RNG state every time
        model.roi_heads.sampling_generator = torch.Generator().manual_seed(seed)
        with EventStorage():
            sampled = model.roi_heads.label_and_sample_proposals(proposals, targets)
        return [p.proposal_boxes.tensor for p in sampled]

    first, again, other = sample(1), sample(1), sample(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other))


# --- bad data --------------------------------------------------------------------------


def write_coco(tmp_path, name, tiny_scenes, edit):
    """Register a copy of the tiny train split, changed by ``edit(json_dict)``, as ``name``."""
    source = tiny_scenes / "fashion_scenes" / "annotations" / "instances_train.json"
    data = json.loads(source.read_text())
    edit(data)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(path), str(tiny_scenes / "fashion_scenes" / "train"))
    return name


@pytest.fixture
def logs():
    """Messages logged by the project and by Detectron2 (their loggers may not propagate)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    loggers = [logging.getLogger(n) for n in ("libra_rcnn", "detectron2")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    yield lambda: "\n".join(r.getMessage() for r in records)
    for lg, level in zip(loggers, levels):
        lg.removeHandler(handler)
        lg.setLevel(level)


def test_bad_boxes_and_empty_images_are_dropped_with_counts_and_training_runs(tiny_scenes, tmp_path, logs):
    def edit(data):
        first, second, third = data["images"][:3]
        anns = data["annotations"]
        mine = [a for a in anns if a["image_id"] == first["id"]]
        mine[0]["bbox"] = [10, 10, 0, 5]  # zero width
        mine[1]["bbox"] = [first["width"] + 5, 3, 10, 10]  # right of the image
        if len(mine) > 2:
            mine[2]["bbox"] = [-30, -30, 20, 20]  # above-left of the image
        data["annotations"] = [a for a in anns if a["image_id"] != second["id"]]  # no annotations
        for a in data["annotations"]:
            if a["image_id"] == third["id"]:
                a["bbox"] = [4, 4, 0, 0]  # only zero-area boxes: no usable box left

    name = write_coco(tmp_path, "bad_boxes_train", tiny_scenes, edit)
    cfg = tiny_cfg(tmp_path, "DATASETS.TRAIN", f"('{name}',)", "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()")
    trainer = Trainer(cfg)
    messages = logs()
    assert "dropped" in messages and "zero area" in messages and "outside its image" in messages
    assert "Removed 2 images with no usable annotations. 6 images left." in messages
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert all(torch.isfinite(torch.tensor(v)) for v, _ in trainer.storage.history("total_loss").values())


@pytest.mark.parametrize(
    "case,message",
    [("missing_image", "image file"),
     ("unknown_category", "category_id=99"),
     ("empty", "is empty")],
)  # fmt: skip
def test_unusable_data_is_a_clear_error_before_training(case, message, tiny_scenes, tmp_path):
    def edit(data):
        if case == "missing_image":
            data["images"][2]["file_name"] = "no_such_image.png"
        elif case == "unknown_category":
            data["annotations"][5]["category_id"] = 99
        else:
            data["images"], data["annotations"] = [], []

    name = write_coco(tmp_path, f"{case}_train", tiny_scenes, edit)
    with pytest.raises(DatasetError, match=message) as error:
        Trainer(tiny_cfg(tmp_path, "DATASETS.TRAIN", f"('{name}',)"))
    assert name in str(error.value)
    if case == "missing_image":
        assert "no_such_image.png" in str(error.value) and "record 2" in str(error.value)


def test_a_category_beyond_the_model_classes_names_the_config_key(tiny_scenes, tmp_path):
    name = "five_classes_train"
    if name not in DatasetCatalog.list():
        # The tiny split's classes go up to 9; a model of 5 classes cannot learn them.
        DatasetCatalog.register(name, lambda: DatasetCatalog.get("tiny_scenes_train"))
    with pytest.raises(DatasetError, match=r"outside \[0, 5\) \(MODEL.ROI_HEADS.NUM_CLASSES = 5\)"):
        Trainer(tiny_cfg(tmp_path, "DATASETS.TRAIN", f"('{name}',)", "MODEL.ROI_HEADS.NUM_CLASSES", "5"))


def test_train_net_reports_a_missing_test_image_in_one_line_before_training(tiny_scenes, tmp_path):
    source = tiny_scenes / "fashion_scenes"
    scenes = tmp_path / "datasets" / "fashion_scenes"
    (scenes / "annotations").mkdir(parents=True)
    for part in ("train", "val", "annotations/instances_train.json"):
        (scenes / part).symlink_to(source / part)
    val = json.loads((source / "annotations" / "instances_val.json").read_text())
    val["images"][1]["file_name"] = "lost.png"
    (scenes / "annotations" / "instances_val.json").write_text(json.dumps(val))
    proc = train_net("--config-file", CONFIG, *TINY_CLI, "OUTPUT_DIR", str(tmp_path / "out"),
                     datasets_root=tmp_path / "datasets")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "lost.png" in errors[0] and "fashion_scenes_val" in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "out" / "metrics.json").exists()  # nothing trained


# --- non-finite loss -------------------------------------------------------------------


class PoisonWeights(HookBase):
    """Sets the first weights of ``module`` (a path in the model) to NaN before iteration ``at``."""

    def __init__(self, module, at):
        self.module, self.at = module, at

    def before_step(self):
        if self.trainer.iter == self.at:
            with torch.no_grad():
                next(self.trainer.model.get_submodule(self.module).parameters()).fill_(float("nan"))


@pytest.mark.parametrize(
    "module,message",
    [("roi_heads.box_predictor", "Loss became infinite or NaN at iteration=3"),  # Detectron2's message
     ("proposal_generator", "Training has diverged. (at iteration=3)")],  # Detectron2's, with the iteration
)  # fmt: skip
def test_a_nan_stops_training_at_its_iteration_and_keeps_the_last_good_checkpoint(module, message, tiny_scenes, tmp_path):
    cfg = tiny_cfg(tmp_path, "SOLVER.MAX_ITER", "10", "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()")
    trainer = Trainer(cfg)
    trainer.register_hooks([PoisonWeights(module, at=3)])
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError, match=re.escape(message)):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    state = load_checkpoint(tmp_path / "model_0000001.pth")
    assert state["iteration"] == 1
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in state["model"].values())


# --- two processes -------------------------------------------------------------------


def test_two_processes_on_the_cpu_match_one_process_with_the_same_total_batch(tiny_scenes, tmp_path):
    runs = {}
    for num_gpus in (1, 2):
        out = tmp_path / f"procs{num_gpus}"
        proc = train_net("--num-gpus", str(num_gpus), "--config-file", CONFIG, *TINY_CLI, "SOLVER.IMS_PER_BATCH", "2",
                         "SOLVER.MAX_ITER", "40", "SOLVER.BASE_LR", "0.01", "OUTPUT_DIR", str(out),
                         datasets_root=tiny_scenes)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[num_gpus] = metrics_lines(out)
        assert f"World size: {num_gpus}" in proc.stdout + proc.stderr
    for lines in runs.values():
        assert [m["iteration"] for m in lines if "total_loss" in m] == [19, 39]
        assert "bbox/AP" in lines[-1]
    one, two = (runs[n][1]["total_loss"] for n in (1, 2))
    assert abs(two - one) < 0.25 * one, (one, two)


# --- bad config --------------------------------------------------------------------------

LIBRA_CONFIG = "configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml"
FSAF_CONFIG = "configs/FashionScenes/ab_fsaf_R_18_FPN_GN.yaml"
LIBRA_RETINANET_CONFIG = "configs/FashionScenes/libra_retinanet_R_18_FPN_GN.yaml"
# A refused value for every key of add_libra_config, and a config that uses the key.
BAD_VALUES = {
    "BFP.FPN_BACKBONE": ("no_such_fpn_builder", LIBRA_CONFIG),
    "BFP.REFINE_TYPE": ("gcb", LIBRA_CONFIG),
    "BFP.REFINE_LEVEL": ("7", LIBRA_CONFIG),
    "SAMPLER.POS": ("hardest", LIBRA_CONFIG),
    "SAMPLER.NEG": ("ohem", LIBRA_CONFIG),
    "SAMPLER.NUM_BINS": ("0", LIBRA_CONFIG),
    "SAMPLER.BINNING": ("log", LIBRA_CONFIG),
    "SAMPLER.FLOOR_THR": ("0.7", LIBRA_CONFIG),
    "SAMPLER.FLOOR_FRACTION": ("1.5", LIBRA_CONFIG),
    "BALANCED_L1.ALPHA": ("-0.5", LIBRA_CONFIG),
    "BALANCED_L1.GAMMA": ("0.0", LIBRA_CONFIG),
    "BALANCED_L1.BETA": ("0.0", LIBRA_CONFIG),
    "BALANCED_L1.VARIANT": ("v2", LIBRA_CONFIG),
    "RETINANET.BALANCED_L1.ALPHA": ("0.0", LIBRA_RETINANET_CONFIG),
    "RETINANET.BALANCED_L1.GAMMA": ("-1.5", LIBRA_RETINANET_CONFIG),
    "RETINANET.BALANCED_L1.BETA": ("-0.11", LIBRA_RETINANET_CONFIG),
    "RETINANET.BALANCED_L1.VARIANT": ("v3", LIBRA_RETINANET_CONFIG),
    "FSAF.ANCHOR_BASED": ("maybe", FSAF_CONFIG),
    "FSAF.EFFECTIVE_SCALE": ("1.5", FSAF_CONFIG),
    "FSAF.IGNORE_SCALE": ("0.1", FSAF_CONFIG),
    "FSAF.NORM_SCALE": ("0.0", FSAF_CONFIG),
    "FSAF.SELECTION": ("random", FSAF_CONFIG),
    "FSAF.BOX_LOSS_TYPE": ("l1", FSAF_CONFIG),
    "FSAF.CLS_LOSS_WEIGHT": ("-1.0", FSAF_CONFIG),
    "FSAF.BOX_LOSS_WEIGHT": ("-1.0", FSAF_CONFIG),
    "ANALYSIS.GRAD_SHARE_PERIOD": ("-1", LIBRA_CONFIG),
    "CLASS_NAMES": ("['T-shirt/top', 'Trouser']", LIBRA_CONFIG),  # 2 names for 10 classes
    "RPN.NEG_POS_UB": ("-2.0", LIBRA_CONFIG),
}


def libra_keys(node, prefix="MODEL.LIBRA."):
    for name, value in node.items():
        if isinstance(value, dict):
            yield from libra_keys(value, f"{prefix}{name}.")
        else:
            yield prefix + name


def test_every_project_key_has_a_refused_value_below():
    cfg = tiny_cfg("unused")
    assert sorted(libra_keys(cfg.MODEL.LIBRA)) == sorted("MODEL.LIBRA." + k for k in BAD_VALUES)


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_a_bad_project_value_fails_before_training_naming_the_key(key, tiny_scenes, tmp_path):
    value, config = BAD_VALUES[key]
    args = args_for("--config-file", str(REPO / config), *TINY, "OUTPUT_DIR", str(tmp_path), f"MODEL.LIBRA.{key}", value)
    with pytest.raises(InputError, match=re.escape(f"MODEL.LIBRA.{key}")):
        check_inputs(build_config(args), args)


def test_the_roi_heads_balanced_l1_keys_are_refused_in_a_one_stage_config(tiny_scenes, tmp_path):
    # Libra RetinaNet reads MODEL.LIBRA.RETINANET.BALANCED_L1; a value set in the RoI head's node would
    # be silently unused.
    args = args_for("--config-file", str(REPO / LIBRA_RETINANET_CONFIG), *TINY, "OUTPUT_DIR", str(tmp_path),
                    "MODEL.LIBRA.BALANCED_L1.BETA", "0.2")  # fmt: skip
    with pytest.raises(InputError, match=r"MODEL\.LIBRA\.BALANCED_L1\.BETA = 0\.2 .* set MODEL\.LIBRA\.RETINANET\."
                                         r"BALANCED_L1\.BETA instead"):
        check_inputs(build_config(args), args)


def test_class_names_in_another_order_than_the_datasets_are_refused(tiny_scenes, tmp_path):
    """A converted model names its classes; a dataset that orders them otherwise would score every
    detection against the wrong class."""
    names = list(reversed(FASHION_MNIST_CLASSES))
    args = args_for("--config-file", str(REPO / LIBRA_CONFIG), *TINY, "OUTPUT_DIR", str(tmp_path),
                    "MODEL.LIBRA.CLASS_NAMES", repr(names))  # fmt: skip
    with pytest.raises(InputError, match=r"MODEL.LIBRA.CLASS_NAMES differs from dataset 'tiny_scenes_train'.s "
                                         r"classes at index 0: the model's 'Ankle boot', the dataset's 'T-shirt/top'"):
        check_inputs(build_config(args), args)
    args = args_for("--config-file", str(REPO / LIBRA_CONFIG), *TINY, "OUTPUT_DIR", str(tmp_path),
                    "MODEL.LIBRA.CLASS_NAMES", repr(list(FASHION_MNIST_CLASSES)))  # fmt: skip
    check_inputs(build_config(args), args)  # the same names in the same order pass
