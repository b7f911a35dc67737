"""python -m libra_rcnn.predict on a folder: pictures, COCO results JSON, unreadable files."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

import libra_rcnn
from libra_rcnn.config import InputError
from libra_rcnn.tools.predict import expand_inputs, main

from conftest import CONFIG, TINY, load_cfg


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A randomly initialised Libra R-CNN (tiny sizes) saved as a checkpoint."""
    torch.manual_seed(0)
    model = build_model(load_cfg(CONFIG, TINY))
    folder = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(model, save_dir=str(folder)).save("model_random")
    return str(folder / "model_random.pth")


@pytest.fixture
def images(tiny_scenes, tmp_path):
    """The tiny val images 000000-000003.png, an unreadable .png and a .txt note."""
    folder = tmp_path / "images"
    shutil.copytree(tiny_scenes / "fashion_scenes" / "val", folder)
    (folder / "zz_broken.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image either")
    return folder


def test_folder_pictures_json_and_an_unreadable_file(images, weights, tiny_scenes, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--config-file", CONFIG, "--input", str(images), "--output", str(out), "--confidence-threshold", "0.05"]
    code = main(argv + [*TINY, "MODEL.WEIGHTS", weights])
    err = capsys.readouterr().err
    assert code == 1  # one file skipped, the rest predicted
    broken = images / "zz_broken.png"
    assert f"python -m libra_rcnn.predict: error: cannot read {broken}: not an image in a format PIL reads, or damaged; skipped" in err
    assert "notes.txt" not in err
    assert sorted(p.name for p in out.iterdir()) == [f"{i:06d}.png" for i in range(4)] + ["predictions.json"]
    for i in range(4):
        drawn = Image.open(out / f"{i:06d}.png")
        assert drawn.size == Image.open(images / f"{i:06d}.png").size

    detections = json.loads((out / "predictions.json").read_text())
    assert detections and {d["image_id"] for d in detections} <= {0, 1, 2, 3}
    # The same detections as DefaultPredictor's on image 0, boxes as XYWH, dataset category ids 1-10.
    cfg = load_cfg(CONFIG, [*TINY, "MODEL.WEIGHTS", weights, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05"])
    instances = DefaultPredictor(cfg)(read_image(str(images / "000000.png"), format="BGR"))["instances"]
    mine = [d for d in detections if d["image_id"] == 0]
    assert len(mine) == len(instances) > 0
    xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in mine)])
    assert torch.allclose(xyxy, instances.pred_boxes.tensor, atol=1e-3)
    assert [d["score"] for d in mine] == pytest.approx(instances.scores.tolist())
    assert [d["category_id"] for d in mine] == (instances.pred_classes + 1).tolist()
    for d in detections:
        assert d["category_name"] == libra_rcnn.FASHION_MNIST_CLASSES[d["category_id"] - 1]
        assert d["file_name"] == str(images / f"{d['image_id']:06d}.png") and d["score"] >= 0.05

    # COCO's results format: pycocotools evaluates it against the split's annotations.
    gt = COCO(str(tiny_scenes / "fashion_scenes" / "annotations" / "instances_val.json"))
    evaluation = COCOeval(gt, gt.loadRes(str(out / "predictions.json")), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert 0.0 <= evaluation.stats[0] <= 1.0


def test_threshold_keeps_the_higher_scores(images, weights, tmp_path):
    counts = {}
    for threshold in ("0.1", "0.125"):  # the random model's scores lie in about [0.09, 0.14]
        out = tmp_path / threshold
        argv = ["--config-file", CONFIG, "--input", str(images / "000001.png"), "--output", str(out)]
        assert main(argv + ["--confidence-threshold", threshold, *TINY, "MODEL.WEIGHTS", weights]) == 0
        scores = [d["score"] for d in json.loads((out / "predictions.json").read_text())]
        assert min(scores, default=1.0) >= float(threshold)
        counts[threshold] = len(scores)
    assert counts["0.1"] > counts["0.125"]


def test_inputs_files_folders_and_globs(images):
    pngs = [str(images / f"{i:06d}.png") for i in range(4)] + [str(images / "zz_broken.png")]
    assert expand_inputs([str(images)]) == pngs
    assert expand_inputs([str(images / "00000[12].png"), pngs[2], str(images)]) == [
        pngs[1], pngs[2], pngs[0], pngs[3], pngs[4]
    ]  # fmt: skip
    assert expand_inputs([str(images / "notes.txt")]) == [str(images / "notes.txt")]  # a file is taken as given
    with pytest.raises(InputError, match="no such file or folder"):
        expand_inputs([str(images / "missing*.jpg")])


@pytest.mark.parametrize(
    "extra,message",
    [([], "fashion_scenes/libra_rcnn_R_18_FPN_GN/model_final.pth not found"),  # OUTPUT_DIR/model_final.pth by default
     (["MODEL.WEIGHTS", "missing.pth"], "MODEL.WEIGHTS file missing.pth not found"),
     (["--config-file", "configs/missing.yaml"], "config file configs/missing.yaml not found"),
     (["--config-file", "configs/COCO-Detection/libra_rcnn_R_50_FPN_1x.py"], "a LazyConfig; DefaultPredictor")],
)  # fmt: skip
def test_bad_arguments_fail_in_one_line(images, tmp_path, capsys, extra, message):
    argv = ["--config-file", CONFIG, "--input", str(images), "--output", str(tmp_path / "out")]
    if extra and extra[0] == "--config-file":
        argv[1], extra = extra[1], ["MODEL.WEIGHTS", "unused.pth"]
    assert main(argv + [*TINY, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m libra_rcnn.predict: error: ") and message in err and len(err.splitlines()) == 1


def test_empty_folder_fails_in_one_line(tmp_path, weights, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["--config-file", CONFIG, "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "out")]
    assert main(argv + [*TINY, "MODEL.WEIGHTS", weights]) == 2
    assert "python -m libra_rcnn.predict: error: no image files" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_drawn_picture_shows_the_boxes(images, weights, tmp_path):
    # At threshold 1.0 nothing is drawn: the picture is the input; at 0.05 boxes change pixels.
    pictures = {}
    for threshold in ("1.0", "0.05"):
        out = tmp_path / threshold
        argv = ["--config-file", CONFIG, "--input", str(images / "000002.png"), "--output", str(out)]
        main(argv + ["--confidence-threshold", threshold, *TINY, "MODEL.WEIGHTS", weights])
        pictures[threshold] = np.asarray(Image.open(out / "000002.png").convert("RGB")).astype(int)
    original = np.asarray(Image.open(images / "000002.png").convert("RGB")).astype(int)
    assert np.abs(pictures["1.0"] - original).max() <= 2  # PNG of the Visualizer's canvas
    assert np.abs(pictures["0.05"] - original).max() > 50
