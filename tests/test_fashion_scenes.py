"""The Fashion-MNIST scenes dataset: determinism, splits, boxes, sizes and registration."""
import json

import numpy as np
import pytest
import torch

import libra_rcnn.data.fashion_scenes as fs
from detectron2.data import DatasetCatalog, MetadataCatalog


def read_split(root, split):
    with open(root / "annotations" / f"instances_{split}.json") as f:
        return json.load(f)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        fs.build_fashion_scenes(str(tmp_path / name), num_train=3, num_val=2, seed=seed, size=96)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 + 3 + 2
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)


def test_train_and_val_items_come_from_their_own_split(tmp_path, monkeypatch):
    # Stand-in splits: train items are labelled 0-4, test items 5-9.
    rng = np.random.default_rng(0)
    fake = {
        split: (rng.integers(0, 256, size=(50, 28, 28)).astype(np.uint8), rng.integers(lo, lo + 5, size=50))
        for split, lo in (("train", 0), ("val", 5))
    }
    monkeypatch.setattr(fs, "load_fashion_mnist", lambda split, root: fake[split])
    fs.build_fashion_scenes(str(tmp_path), num_train=6, num_val=6, seed=0, size=128)
    train, val = read_split(tmp_path, "train"), read_split(tmp_path, "val")
    assert {a["category_id"] for a in train["annotations"]} <= {1, 2, 3, 4, 5}
    assert {a["category_id"] for a in val["annotations"]} <= {6, 7, 8, 9, 10}


def test_scene_contents(tmp_path):
    images, labels = fs.load_fashion_mnist("val")
    rng = np.random.default_rng(5)
    areas, counts = [], []
    for _ in range(40):
        pixels, items = fs.render_scene(rng, images, labels, size=256)
        assert pixels.shape == (256, 256, 3) and pixels.dtype == np.uint8
        counts.append(len(items))
        for item in items:
            x, y, w, h = item["bbox"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 256 and y + h <= 256
            assert 0 <= item["label"] < 10
            areas.append(w * h)
    assert min(counts) >= 1 and max(counts) <= 12 and np.mean(counts) > 4
    areas = np.array(areas)
    # COCO's small (< 32^2), medium and large (> 96^2) objects all occur.
    assert (areas < 32**2).sum() > 10 and ((areas >= 32**2) & (areas < 96**2)).sum() > 10 and (areas > 96**2).sum() > 3


def test_boxes_are_tight_around_visible_pixels():
    # An item bright only in its central 14x14 of 28x28: its box is about half of the pasted
    # square, and a fully bright item's box is the whole square (cut only by the border).
    hollow = np.zeros((1, 28, 28), dtype=np.uint8)
    hollow[0, 7:21, 7:21] = 255
    full = np.full((1, 28, 28), 255, dtype=np.uint8)
    for seed in range(5):
        (a,) = fs.render_scene(np.random.default_rng(seed), full, np.array([3]), size=128, min_objects=1, max_objects=1)[1]
        (b,) = fs.render_scene(np.random.default_rng(seed), hollow, np.array([3]), size=128, min_objects=1, max_objects=1)[1]
        x, y, w, h = a["bbox"]
        assert w == h or x == 0 or y == 0 or x + w == 128 or y + h == 128
        # Same seed, same placement: the hollow item's box lies inside the full one, about half as wide.
        bx, by, bw, bh = b["bbox"]
        assert x <= bx and y <= by and bx + bw <= x + w and by + bh <= y + h
        if w == h:
            assert abs(bw - w / 2) <= 2 and abs(bh - h / 2) <= 2


def test_registration_and_class_names(tiny_scenes):
    records = DatasetCatalog.get("tiny_scenes_val")
    assert len(records) == 4 and all(r["annotations"] for r in records)
    assert MetadataCatalog.get("tiny_scenes_val").thing_classes == fs.FASHION_MNIST_CLASSES
    assert "fashion_scenes_train" in DatasetCatalog.list()


def test_missing_fashion_mnist_names_the_file_and_the_package(tmp_path):
    try:
        fs.load_fashion_mnist("train", str(tmp_path))
    except FileNotFoundError as e:
        assert "train-images-idx3-ubyte.gz" in str(e) and "dataset-fashion-mnist" in str(e)
    else:
        raise AssertionError("no error for a missing Fashion-MNIST folder")


def test_json_has_coco_info_and_licenses(tiny_scenes):
    val = read_split(tiny_scenes / "fashion_scenes", "val")
    assert "seed 3" in val["info"]["description"] and "val split: 4 scenes of 128x128" in val["info"]["description"]
    assert val["licenses"] == [fs.FASHION_MNIST_LICENSE]
    assert {image["license"] for image in val["images"]} == {1}


def test_coco_evaluator_scores_the_builder_output(tiny_scenes, tmp_path):
    # The GT boxes as detections: AP 100. One detection per image shifted to IoU < 0.5 with
    # every GT box of its class makes it a false positive that outranks the rest: AP drops.
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, BoxMode, Instances

    def predictions(records, spoil):
        inputs, outputs = [], []
        for record in records:
            boxes = torch.tensor(
                [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]],
                dtype=torch.float32,
            )
            scores = torch.full((len(boxes),), 0.9)
            if spoil:
                boxes[0] += torch.tensor([200.0, 200.0, 200.0, 200.0])  # off the 128 px image
                scores[0] = 1.0
            instances = Instances((record["height"], record["width"]))
            instances.pred_boxes = Boxes(boxes)
            instances.scores = scores
            instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]])
            inputs.append({"image_id": record["image_id"]})
            outputs.append({"instances": instances})
        return inputs, outputs

    records = DatasetCatalog.get("tiny_scenes_val")
    aps = []
    for spoil in (False, True):
        evaluator = COCOEvaluator("tiny_scenes_val", output_dir=str(tmp_path / str(spoil)))
        evaluator.reset()
        evaluator.process(*predictions(records, spoil))
        aps.append(evaluator.evaluate()["bbox"]["AP"])
        with open(tmp_path / str(spoil) / "coco_instances_results.json") as f:
            assert len(json.load(f)) == sum(len(r["annotations"]) for r in records)
    assert aps[0] == pytest.approx(100.0)
    assert aps[1] < 99.0
