"""The reference harness (benchmarks/reference): mmdetection 3.3 trained on FashionScenes.

- its stand-ins for mmcv's compiled ops follow mmcv's kernels: NMS with both ``offset``
  conventions, and RoIAlign (torchvision's kernel behind mmcv's own ``RoIAlign`` module) with
  ``aligned`` on and off and fixed or adaptive sampling, against NumPy implementations of mmcv's
  CPU kernels (``nms_cpu``, ``roi_align_cpu``) as their C++ sources define them;
- its mirror configs initialise every layer as our FashionScenes configs do;
- a short run trains, resumes from its checkpoint, evaluates, converts and compares.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from detectron2.modeling import build_model

from libra_rcnn.converters import convert_state_dict

from conftest import REPO, load_cfg
from mmdet_reference import mmdet_config, mmdet_env  # noqa: F401 (fixture)


def mmcv_nms_reference(boxes: np.ndarray, scores: np.ndarray, threshold: float, offset: int) -> list:
    """mmcv's ``nms_cpu``: by decreasing score, keep a box and drop every later one whose IoU with
    it, widths measured as ``x2 - x1 + offset``, is strictly above ``threshold``."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + offset) * (y2 - y1 + offset)
    order = np.argsort(-scores, kind="stable")
    dropped = np.zeros(len(boxes), dtype=bool)
    keep = []
    for n, i in enumerate(order):
        if dropped[i]:
            continue
        keep.append(int(i))
        for j in order[n + 1 :]:
            w = max(0.0, min(x2[i], x2[j]) - max(x1[i], x1[j]) + offset)
            h = max(0.0, min(y2[i], y2[j]) - max(y1[i], y1[j]) + offset)
            inter = w * h
            if inter / (areas[i] + areas[j] - inter) > threshold:
                dropped[j] = True
    return keep


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_stand_in_follows_mmcvs_kernel(mmdet_env, offset, threshold):
    from mmcv.ops import nms

    g = torch.Generator().manual_seed(offset * 10 + int(threshold * 10))
    xy = torch.rand(300, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 2 + torch.rand(300, 2, generator=g) * 30], dim=1)  # small boxes: +1 matters
    scores = torch.rand(300, generator=g)
    dets, keep = nms(boxes, scores, threshold, offset=offset)  # mmcv's own wrapper, our ext_module.nms
    expected = mmcv_nms_reference(boxes.double().numpy(), scores.double().numpy(), threshold, offset)
    assert keep.tolist() == expected
    assert torch.equal(dets[:, 4], scores[keep]) and len(expected) < 300


def _bilinear(feature: np.ndarray, y: float, x: float) -> np.ndarray:
    """mmcv's ``bilinear_interpolate`` (roi_align_cpu.cpp) at (y, x) of a (C, H, W) map."""
    height, width = feature.shape[1:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * feature[:, y_low, x_low] + hy * lx * feature[:, y_low, x_high]
            + ly * hx * feature[:, y_high, x_low] + ly * lx * feature[:, y_high, x_high])  # fmt: skip


def mmcv_roi_align_reference(features: np.ndarray, rois: np.ndarray, size: int, scale: float, ratio: int,
                             aligned: bool) -> np.ndarray:  # fmt: skip
    """mmcv's ``roi_align_cpu`` in "avg" mode: (R, C, size, size) for (N, C, H, W) features and
    (R, 5) rois (batch index, XYXY_ABS)."""
    out = np.zeros((len(rois), features.shape[1], size, size))
    shift = 0.5 if aligned else 0.0
    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        start_x, start_y = x1 * scale - shift, y1 * scale - shift
        roi_w, roi_h = (x2 - x1) * scale, (y2 - y1) * scale
        if not aligned:  # the legacy kernel makes every RoI at least 1x1
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_w, bin_h = roi_w / size, roi_h / size
        grid_h = ratio if ratio > 0 else math.ceil(roi_h / size)
        grid_w = ratio if ratio > 0 else math.ceil(roi_w / size)
        count = max(grid_h * grid_w, 1)
        for ph in range(size):
            for pw in range(size):
                total = np.zeros(features.shape[1])
                for iy in range(grid_h):
                    y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total += _bilinear(features[int(b)], y, x)
                out[r, :, ph, pw] = total / count
    return out


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [0, 1, 2])
def test_roi_align_through_mmcvs_module_follows_mmcvs_kernel(mmdet_env, aligned, ratio):
    from mmcv.ops import RoIAlign

    g = torch.Generator().manual_seed(ratio + 3 * aligned)
    features = torch.randn(2, 3, 13, 17, generator=g, dtype=torch.float64)
    xy = torch.rand(24, 2, generator=g) * torch.tensor([17 * 8.0, 13 * 8.0]) - 20  # some beyond the borders
    wh = torch.rand(24, 2, generator=g) * 90 + 0.5  # from sub-pixel (after the 1/8 scale) to large
    rois = torch.cat([torch.randint(0, 2, (24, 1), generator=g).double(), xy, xy + wh], dim=1)
    layer = RoIAlign(output_size=7, spatial_scale=1 / 8, sampling_ratio=ratio, aligned=aligned, use_torchvision=True)
    ours = layer(features, rois.clone())
    expected = mmcv_roi_align_reference(features.numpy(), rois.numpy(), 7, 1 / 8, ratio, aligned)
    assert np.abs(ours.numpy() - expected).max() < 1e-10


def test_other_compiled_ops_name_themselves_when_called(mmdet_env):
    from benchmarks.reference.env import TorchvisionOps

    with pytest.raises(RuntimeError, match="softnms is not installed"):
        TorchvisionOps().softnms(torch.zeros(1, 4))


@pytest.mark.parametrize(
    "mirror,ours",
    [("faster_rcnn_R_18_FPN_GN.py", "configs/FashionScenes/faster_rcnn_R_18_FPN_GN.yaml"),
     ("libra_rcnn_R_18_FPN_GN.py", "configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml"),
     ("retinanet_R_18_FPN_GN.py", "configs/FashionScenes/retinanet_R_18_FPN_GN.yaml"),
     ("libra_retinanet_R_18_FPN_GN.py", "configs/FashionScenes/libra_retinanet_R_18_FPN_GN.yaml")],
)  # fmt: skip
def test_the_mirror_configs_initialise_every_layer_as_ours(mmdet_env, mirror, ours):
    """Each parameter of mmdetection's mirror model, named as ours by the converter, has our
    model's shape and initial distribution (same mean and std within sampling error)."""
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    theirs = MODELS.build(mmdet_config(mirror).model)
    theirs.init_weights()
    renamed, _ = convert_state_dict(theirs.state_dict())
    model = build_model(load_cfg(ours, ["MODEL.DEVICE", "cpu"]))
    state = model.state_dict()
    compared = 0
    for key, value in renamed.items():
        if key not in state or not value.is_floating_point():
            continue
        mine = state[key]
        assert value.shape == mine.shape, key
        tolerance = 4 / math.sqrt(value.numel()) + 1e-6  # a few standard errors of a sample std
        assert abs(float(value.std(unbiased=False)) - float(mine.std(unbiased=False))) <= tolerance * max(
            float(mine.std(unbiased=False)), 1e-3), key  # fmt: skip
        assert abs(float(value.mean()) - float(mine.mean())) <= tolerance * max(float(mine.std()), 1e-3) + 1e-6, key
        compared += 1
    # Every parameter of ours is compared but the P6/P7 norms (mmdetection's RetinaNet FPN has them,
    # ours not) and the RetinaNet head's conv biases before GN (ours have them, at 0).
    assert compared >= len([k for k in state if state[k].is_floating_point()]) - 16


def test_a_short_reference_run_resumes_evaluates_and_compares(mmdet_env, tiny_scenes, tmp_path):
    """Two iterations, then two more resumed from the checkpoint; mmdetection's CocoMetric;
    the converted checkpoint evaluated by train_net.py on the same split."""
    env = dict(os.environ, FASHION_SCENES=str(tiny_scenes / "fashion_scenes"), PYTHONWARNINGS="ignore")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "benchmarks.reference.train",
               "benchmarks/reference/configs/libra_rcnn_R_18_FPN_GN.py", "--out", str(out), "--seed", "3"]  # fmt: skip
    first = subprocess.run(command + ["--max-iters", "2"], cwd=REPO, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((out / "result.json").read_text())["final_iter"] == 2
    (out / "result.json").unlink()
    second = subprocess.run(command + ["--max-iters", "4"], cwd=REPO, env=env, capture_output=True, text=True)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert "resumed epoch: 0, iter: 2" in log and "Iter(train) [4/4]" in log and "Iter(train) [2/4]" not in log
    result = json.loads((out / "result.json").read_text())
    assert result["final_iter"] == 4 and set(result["box_ap"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    steps = [json.loads(line)["step"] for line in (out / "scalars.json").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # each logged iteration once, over both parts
    compare = subprocess.run([sys.executable, "-m", "benchmarks.reference.compare", str(out), "--datasets",
                              str(tiny_scenes)], cwd=REPO, env=env, capture_output=True, text=True)  # fmt: skip
    assert compare.returncode == 0, (compare.stdout + compare.stderr)[-3000:]
    comparison = json.loads((out / "comparison.json").read_text())
    assert (out / "converted" / "model.yaml").is_file()
    assert all(abs(v) < 0.2 for v in comparison["difference"].values())
    assert comparison["detections"]["matched"] == comparison["detections"]["mmdetection_detections"]
