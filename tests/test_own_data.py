"""Your own COCO export, no code (docs/own_data.md): declared in a config, trained, evaluated,
predicted on and exported from the run's own config.yaml in another folder, fine-tuned across class
counts; each unusable input stops the run in one line before anything is written.

The export (libra_rcnn.data.tool_export) has every quirk labelling tools write: category ids 7, 12
and 40 listed out of order, names with spaces, images without annotations, iscrowd regions, boxes
of zero area and outside their image, no info or licenses, no segmentation, sub-folders,
grayscale, RGBA and EXIF-rotated images of mixed sizes.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from PIL import Image, ImageOps


from conftest import REPO, SMALL_OVERRIDES, load_cfg, own_export_project
from test_lazy_config import small_overrides

# Small and short: the config below only declares the data, the command line shrinks the run.
SHORT = [a for a in SMALL_OVERRIDES if a not in ("MODEL.ROI_HEADS.NUM_CLASSES", "10")] + [
    "SOLVER.MAX_ITER", "6", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "1000",
    "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
]  # fmt: skip
NAMES = ["foot wear", "top wear", "bag"]  # in category id order: 7, 12, 40


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A project folder: the export under data/, and a config that inherits a Libra R-CNN config
    and declares the export with paths relative to itself."""
    project = tmp_path_factory.mktemp("project")
    own_export_project(project, "shop", "configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml", num_train=24, num_val=8,
                       seed=1, extra='OUTPUT_DIR: "output/shop"\n')  # fmt: skip
    return project


def run(*argv, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip


def errors(proc):
    return [line for line in proc.stderr.splitlines() if ": error: " in line]


def test_the_export_has_the_quirks_of_labelling_tools(export):
    data = json.loads((export / "data/annotations/train.json").read_text())
    assert "info" not in data and "licenses" not in data
    assert [c["id"] for c in data["categories"]] == [40, 7, 12] and "foot wear" in [c["name"] for c in data["categories"]]
    annotated = {a["image_id"] for a in data["annotations"]}
    assert any(im["id"] not in annotated for im in data["images"])
    assert any(a["iscrowd"] for a in data["annotations"]) and any(a["bbox"][2] == 0 for a in data["annotations"])
    assert any(a["bbox"][0] >= next(im["width"] for im in data["images"] if im["id"] == a["image_id"])
               for a in data["annotations"])  # fmt: skip
    assert not any(a.get("segmentation") for a in data["annotations"])
    assert all("/" in im["file_name"] for im in data["images"])
    modes, sizes, rotated = set(), set(), 0
    for im in data["images"]:
        image = Image.open(export / "data/images" / im["file_name"])
        modes.add(image.mode)
        upright = ImageOps.exif_transpose(image)
        sizes.add(upright.size)
        rotated += upright.size != image.size
        assert upright.size == (im["width"], im["height"])  # the annotations are in the upright view
    assert {"L", "RGBA", "RGB"} <= modes and len(sizes) >= 3 and rotated > 0


@pytest.fixture(scope="module")
def trained(export, tmp_path_factory):
    """train_net.py on the export, run from the project folder: the run's folder."""
    proc = run(REPO / "train_net.py", "--config-file", "shop.yaml", *SHORT, cwd=export)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = export / "output/shop"
    assert (out / "model_final.pth").is_file()
    return out, proc.stdout + proc.stderr


def test_training_drops_unusable_boxes_and_evaluates_by_the_exports_class_names(trained):
    out, log = trained
    assert "dropped" in log and "zero area" in log and "outside its image" in log
    assert "Per-category bbox AP" in log and all(f"| {name}" in log for name in NAMES)
    final = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()][-1]
    assert {f"bbox/AP-{name}" for name in NAMES} <= set(final)
    chart = run("-m", "libra_rcnn.analysis.class_ap", "--metrics", out / "metrics.json", "--out", out / "class_ap.png",
                cwd=out)  # fmt: skip
    assert chart.returncode == 0 and (out / "class_ap.png").read_bytes()[:4] == b"\x89PNG"
    # The run's own config holds absolute paths: it works from any folder.
    written = load_cfg(out / "config.yaml")
    assert all(os.path.isabs(p) for entry in written.DATASETS.COCO_INSTANCES for p in entry[1:])
    assert os.path.isabs(written.OUTPUT_DIR) and Path(written.OUTPUT_DIR) == out


def test_evaluate_predict_and_export_from_the_runs_config_elsewhere(trained, tmp_path):
    out, _ = trained
    config, weights = out / "config.yaml", out / "model_final.pth"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evaluated = run(REPO / "train_net.py", "--config-file", config, "--eval-only", "MODEL.WEIGHTS", weights, cwd=elsewhere)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "Per-category bbox AP" in evaluated.stdout + evaluated.stderr
    predicted = run("-m", "libra_rcnn.predict", "--config-file", config, "--input", out.parent.parent / "data/images/val/shelf_0",
                    "--output", "pictures", "--confidence-threshold", "0.0", cwd=elsewhere)  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    detections = json.loads((elsewhere / "pictures/predictions.json").read_text())
    assert detections and {d["category_id"] for d in detections} <= {7, 12, 40}
    assert {d["category_name"] for d in detections} <= set(NAMES)
    exported = run("-m", "libra_rcnn.export", "--config-file", config, "--format", "torchscript", "--output", "exported",
                   "MODEL.WEIGHTS", weights, cwd=elsewhere)  # fmt: skip
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (elsewhere / "exported/model.ts").is_file()


def test_fine_tuning_from_a_ten_class_checkpoint_skips_the_class_layers(export, tiny_scenes, tmp_path):
    cfg = load_cfg("configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml", SMALL_OVERRIDES)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("ten_classes")
    proc = run(REPO / "train_net.py", "--config-file", "shop.yaml", *SHORT, "MODEL.WEIGHTS", tmp_path / "ten_classes.pth",
               "OUTPUT_DIR", tmp_path / "tuned", cwd=export)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    for layer in ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight"):
        assert f"Skip loading parameter '{layer}'" in log
    assert "backbone" not in "".join(line for line in log.splitlines() if "Skip loading" in line)
    assert (tmp_path / "tuned/model_final.pth").is_file()


def broken(export, tmp_path, edit):
    """A copy of the export's train JSON changed by ``edit``; returns the overrides that use it."""
    data = json.loads((export / "data/annotations/train.json").read_text())
    edit(data)
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    return ["DATASETS.COCO_INSTANCES", repr([["shop_train", str(path), str(export / "data/images")],
                                             ["shop_val", str(export / "data/annotations/val.json"), str(export / "data/images")]])]  # fmt: skip


def no_width(d):
    del d["images"][2]["width"]


def stray_category(d):
    d["annotations"][5]["category_id"] = 99


BAD = {
    "no width": (lambda e, t: broken(e, t, no_width), "train.json: images[2] (id 1006) has 'width' = None"),
    "unknown category": (lambda e, t: broken(e, t, stray_category),
                         "annotations[5] (id 6) has 'category_id' 99, not one of the categories [7, 12, 40]"),
    "class count": (lambda e, t: ["MODEL.ROI_HEADS.NUM_CLASSES", "80"],
                    "has 3 categories but MODEL.ROI_HEADS.NUM_CLASSES = 80; set MODEL.ROI_HEADS.NUM_CLASSES 3"),
    "taken name": (lambda e, t: ["DATASETS.COCO_INSTANCES", repr([["coco_2017_train", "data/annotations/train.json", "data/images"]]),
                                 "DATASETS.TRAIN", "('coco_2017_train',)"],
                   "DATASETS.COCO_INSTANCES[0] ('coco_2017_train'): the name is registered already"),
    "no image folder": (lambda e, t: ["DATASETS.COCO_INSTANCES", repr([["shop_train", "data/annotations/train.json", "pictures"]])],
                        "DATASETS.COCO_INSTANCES[0] ('shop_train'): image folder"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_unusable_input_stops_in_one_line_before_anything_is_written(case, export, tmp_path):
    overrides, message = BAD[case]
    out = tmp_path / "never"
    proc = run(REPO / "train_net.py", "--config-file", "shop.yaml", *SHORT, *overrides(export, tmp_path),
               "OUTPUT_DIR", out, cwd=export)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors(proc)) == 1 and message in errors(proc)[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not out.exists()


def test_the_lazyconfig_declares_its_datasets_too(export, tmp_path):
    """lazy_train_net.py with a LazyConfig that declares the export in ``coco_instances``."""
    (export / "shop.py").write_text(f"""import os
from detectron2.config import LazyConfig

_libra = LazyConfig.load("{REPO}/configs/OwnData/libra_rcnn_tool_export.py")
model, dataloader, optimizer, lr_multiplier, train = (_libra[k] for k in ("model", "dataloader", "optimizer",
                                                                          "lr_multiplier", "train"))
coco_instances = dict(shop_train=("data/annotations/train.json", "data/images"),
                      shop_val=("data/annotations/val.json", "data/images"))
dataloader.train.dataset.names = "shop_train"
dataloader.test.dataset.names = "shop_val"
""")
    tiny = small_overrides("configs/OwnData/libra_rcnn_tool_export.py", "shop_train", "shop_val")
    tiny = [o.replace("num_classes=10", "num_classes=3") for o in tiny]
    proc = run(REPO / "lazy_train_net.py", "--config-file", "shop.py", *tiny, "optimizer.lr=0.002", "train.max_iter=2",
               f"train.output_dir={tmp_path / 'lazy'}", cwd=export)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Distribution of instances among all 3 categories" in log and "foot wear" in log and "copypaste: AP" in log
    saved = (tmp_path / "lazy/config.yaml").read_text()
    assert str(export / "data/annotations/train.json") in saved  # absolute in the saved config
