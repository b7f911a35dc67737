"""Converted mmdetection checkpoints compute what mmdetection computes (docs/reports/mmdet_parity.md).

mmdetection 3.3 (benchmarks/setup_reference_env.sh, prepared by .ci/run) builds each model from
the config it ships, with random non-degenerate weights (every weight, bias and batch-norm
statistic drawn with a fixed seed), and saves it with mmengine's own ``save_checkpoint``.
``python -m libra_rcnn.convert_mmdet`` converts the file, Detectron2's ``DetectionCheckpointer``
loads it into the model of our mmdet config, and both models run on the same normalised input.
The relative difference ``max |ours - theirs| / max |theirs|`` of every compared output must be
at most 1e-4 (float32). Run with ``-s`` to see each difference.

Without the reference environment these tests skip, except under CI (``CI`` set), where they fail.
"""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform

from libra_rcnn import build_fashion_scenes
from libra_rcnn.converters import ConversionError, anchor_order, convert_state_dict, main

from conftest import FixedPyramid, load_cfg, train_net
from mmdet_reference import (  # noqa: F401 (fixtures)
    H,
    RTOL,
    W,
    build_mmdet,
    check_features,
    check_retinanet_head,
    check_rpn_and_box_head,
    compare,
    image,
    load_d2,
    mmdet_config,
    mmdet_env,
    save_and_convert,
)

REPO = Path(__file__).resolve().parents[1]
D2 = "configs/COCO-Detection/mmdet"
MODELS = {  # mmdet config: our config
    "libra_rcnn/libra-faster-rcnn_r50_fpn_1x_coco": f"{D2}/libra-faster-rcnn_r50_fpn_1x_coco.yaml",
    "faster_rcnn/faster-rcnn_r50_fpn_1x_coco": f"{D2}/faster-rcnn_r50_fpn_1x_coco.yaml",
    "libra_rcnn/libra-retinanet_r50_fpn_1x_coco": f"{D2}/libra-retinanet_r50_fpn_1x_coco.yaml",
    "retinanet/retinanet_r50_fpn_1x_coco": f"{D2}/retinanet_r50_fpn_1x_coco.yaml",
    "libra_rcnn/libra-faster-rcnn_r101_fpn_1x_coco": f"{D2}/libra-faster-rcnn_r101_fpn_1x_coco.yaml",
    "libra_rcnn/libra-faster-rcnn_x101-64x4d_fpn_1x_coco": f"{D2}/libra-faster-rcnn_x101-64x4d_fpn_1x_coco.yaml",
}
R50 = list(MODELS)[:4]


@pytest.fixture(scope="module")
def pairs(mmdet_env, tmp_path_factory):
    """mmdet config -> (mmdet model, converted checkpoint path), built once per model.

    The checkpoints carry no config (as a bare zoo file), so the converter's written config
    (the ``.yaml`` beside the checkpoint) holds mmdetection's defaults.
    """
    cache = {}

    def get(config):
        if config not in cache:
            model = build_mmdet(mmdet_config(config), seed=len(cache))
            cache[config] = (model, save_and_convert(model, tmp_path_factory.mktemp("ckpt")))
        return cache[config]

    return get


@pytest.mark.parametrize("source", ["our config", "written config"])
@pytest.mark.parametrize("config", list(MODELS))
def test_features_match_at_every_level(config, source, pairs, image, caplog):
    """Through the config in configs/COCO-Detection/mmdet/ and through the one the converter wrote."""
    theirs_model, weights = pairs(config)
    ours_model = load_d2(MODELS[config] if source == "our config" else weights.with_suffix(".yaml"), weights, caplog)
    check_features(config.split("/")[1], theirs_model, ours_model, image)


@pytest.mark.parametrize("config", R50)
def test_input_normalisation_matches(config, pairs, caplog):
    """mmdetection's preprocessor on a BGR image == Detectron2's on the same image as RGB."""
    from mmdet.structures import DetDataSample

    theirs_model, weights = pairs(config)
    ours_model = load_d2(MODELS[config], weights, caplog)
    bgr = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    theirs = theirs_model.data_preprocessor({"inputs": [bgr], "data_samples": [DetDataSample()]}, False)["inputs"]
    ours = ours_model.preprocess_image([{"image": bgr.flip(0)}]).tensor
    compare(f"{config.split('/')[1]} normalised input", ours, theirs)


@pytest.mark.parametrize("source", ["our config", "written config"])
@pytest.mark.parametrize("config", R50[:2])
def test_rpn_and_box_head_match(config, source, pairs, image, caplog):
    theirs_model, weights = pairs(config)
    ours_model = load_d2(MODELS[config] if source == "our config" else weights.with_suffix(".yaml"), weights, caplog)
    check_rpn_and_box_head(config.split("/")[1], theirs_model, ours_model, image)


@pytest.mark.parametrize("source", ["our config", "written config"])
@pytest.mark.parametrize("config", R50[2:])
def test_retinanet_head_matches_anchor_by_anchor(config, source, pairs, image, caplog):
    theirs_model, weights = pairs(config)
    ours_model = load_d2(MODELS[config] if source == "our config" else weights.with_suffix(".yaml"), weights, caplog)
    check_retinanet_head(config.split("/")[1], theirs_model, ours_model, image)


def test_box_coders_decode_fixed_deltas_alike(mmdet_env):
    """mmdetection's DeltaXYWHBBoxCoder (stds 0.1, 0.1, 0.2, 0.2; clamp at log(1000/16)) vs
    Detectron2's Box2BoxTransform (10, 10, 5, 5) of our box head config."""
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder

    cfg = load_cfg(MODELS[R50[0]])
    ours = Box2BoxTransform(weights=cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS)
    theirs = DeltaXYWHBBoxCoder(target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2])
    boxes = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 16.0, 16.0], [100.5, 30.25, 300.0, 90.0]])
    deltas = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.1, -0.2, 0.3, -0.4], [-1.0, 2.0, 0.5, 0.25],
                            [0.05, 0.05, 5.0, -5.0]]]).expand(3, 4, 4)  # the last hits the clamp
    for i in range(4):
        compare(f"box head decoded boxes, deltas {deltas[0, i].tolist()}",
                ours.apply_deltas(deltas[:, i], boxes), theirs.decode(boxes, deltas[:, i]))  # fmt: skip
    rpn = load_cfg(MODELS[R50[0]]).MODEL.RPN.BBOX_REG_WEIGHTS
    compare("RPN decoded boxes", Box2BoxTransform(weights=rpn).apply_deltas(deltas[:, 2], boxes),
            DeltaXYWHBBoxCoder().decode(boxes, deltas[:, 2]))  # fmt: skip


def test_anchor_order_pairs_detectron2_and_mmdetection_indices():
    # Detectron2 index d = scale * 3 + ratio; mmdetection's m = ratio * 3 + scale.
    assert anchor_order(3, 3).tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]


def test_unplaced_keys_and_mmdet_v1_files_are_refused(tmp_path, capsys):
    state = {"backbone.conv1.weight": torch.zeros(1)}
    with pytest.raises(ConversionError, match="could not place: backbone.conv1.weight"):
        convert_state_dict(state)
    v1 = tmp_path / "v1.pth"
    torch.save({"meta": {"mmdet_version": "1.0rc0+d3ca926"}, "state_dict": state}, v1)
    assert main([str(v1), str(tmp_path / "out.pth")]) == 2
    assert "mmdetection 1.x" in capsys.readouterr().err and not (tmp_path / "out.pth").exists()
    v1_layout = {"rpn_head.rpn_cls.weight": torch.zeros(3, 256, 1, 1), "bbox_head.fc_cls.weight": torch.zeros(81, 4)}
    with pytest.raises(ConversionError, match="mmdetection 1.x"):
        convert_state_dict(v1_layout)


def test_a_key_it_cannot_place_is_named(pairs):
    model, _ = pairs(R50[0])
    state = dict(model.state_dict(), **{"neck.1.refine.extra.weight": torch.zeros(1)})
    with pytest.raises(ConversionError, match=r"1 keys could not be placed: neck\.1\.refine\.extra\.weight"):
        convert_state_dict(state)


def coco_layout_dataset(root: Path, num_images: int, size: int) -> Path:
    """A ``DETECTRON2_DATASETS`` folder whose ``coco_2017_val`` is Fashion-MNIST scenes.

    ``coco/val2017/`` holds the scenes, ``coco/annotations/instances_val2017.json`` lists COCO's
    80 categories with their (non-contiguous) ids and names; the 10 garment classes are
    annotated as every 8th of them (COCO ids 1, 10, 19, ...).
    """
    scenes = root / "scenes"
    build_fashion_scenes(str(scenes), num_train=0, num_val=num_images, seed=4, size=size)
    coco = json.loads((scenes / "annotations" / "instances_val.json").read_text())
    things = [c for c in COCO_CATEGORIES if c["isthing"]]
    coco["categories"] = [{"id": c["id"], "name": c["name"]} for c in things]
    for a in coco["annotations"]:
        a["category_id"] = things[8 * (a["category_id"] - 1)]["id"]
    (root / "coco" / "annotations").mkdir(parents=True)
    shutil.copytree(scenes / "val", root / "coco" / "val2017")
    (root / "coco" / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))
    return root


def test_mmdet_checkpoint_converts_and_evaluates_with_train_net(pairs, tmp_path):
    """mmengine's file -> the command -> train_net.py --eval-only with the written config on
    coco_2017_val (COCO layout)."""
    _, d2_file = pairs(R50[0])
    mmdet_file, converted = d2_file.parent / "mmdet.pth", tmp_path / "converted.pth"
    proc = subprocess.run([sys.executable, "-m", "libra_rcnn.convert_mmdet", str(mmdet_file), str(converted)],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    written = tmp_path / "converted.yaml"
    assert f"config: {written} (no config in the checkpoint" in proc.stdout and "assumed: INPUT.FORMAT = 'RGB'" in proc.stdout
    root = coco_layout_dataset(tmp_path / "datasets", num_images=3, size=128)
    run = train_net("--config-file", str(written), "--eval-only", "DATASETS.TEST", "('coco_2017_val',)",
                    "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
                    "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out"), datasets_root=root)  # fmt: skip
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "not found in the checkpoint" not in log and "not used by the model" not in log
    assert "copypaste: Task: bbox" in log and "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    # The AP table of every class names COCO's categories (10 of them annotated, the rest nan).
    assert "| refrigerator  |" in log and "| toothbrush   | nan" in log


def test_detectron2s_relu_before_p7_would_change_the_features(pairs, image, caplog):
    """Why the RetinaNet configs select build_retinanet_resnet_fpn_p7_no_relu_backbone."""
    theirs_model, weights = pairs(R50[2])
    cfg = load_cfg(MODELS[R50[2]], ["MODEL.DEVICE", "cpu",
                                    "MODEL.LIBRA.BFP.FPN_BACKBONE", "build_retinanet_resnet_fpn_backbone"])  # fmt: skip
    ours_model = build_model(cfg).eval()
    DetectionCheckpointer(ours_model).load(str(weights))
    with torch.no_grad():
        theirs = theirs_model.extract_feat(image)
        ours = ours_model.backbone(image)
    for name, t in zip(("p3", "p4", "p5", "p6", "p7"), theirs):
        rel = float((ours[name] - t).abs().max() / t.abs().max())
        print(f"[parity] libra-retinanet with Detectron2's LastLevelP6P7 (ReLU before P7): {name} relative {rel:.3g}")
        assert rel > 100 * RTOL  # the BFP spreads P7's difference to every level


@pytest.mark.parametrize("refine", ["none", "conv", "non_local"])
def test_bfp_module_equals_mmdetections_in_float64(mmdet_env, refine):
    # mmdetection's BFP neck (the reference's ConvModule conv + ReLU for "conv", its NonLocal2d
    # for "non_local") and ours, same random weights, same odd-sized levels, float64.
    from mmdet.models.necks import BFP

    from libra_rcnn import BalancedFeaturePyramid

    g = torch.Generator().manual_seed(11)
    sizes = [(33, 41), (17, 21), (9, 11), (5, 6)]
    levels = {f"p{i + 2}": torch.randn(2, 8, h, w, generator=g, dtype=torch.float64) for i, (h, w) in enumerate(sizes)}
    theirs = BFP(in_channels=8, num_levels=4, refine_level=1, refine_type=None if refine == "none" else refine)
    theirs = theirs.double().eval()
    ours = BalancedFeaturePyramid(FixedPyramid(levels), refine_level=1, refine_type=refine).double().eval()
    names = {".conv_out.conv.": ".out.", ".g.conv.": ".g.", ".theta.conv.": ".theta.", ".phi.conv.": ".phi."}
    their_state = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) / math.sqrt(v[0].numel())
                   for k, v in theirs.state_dict().items()}  # fmt: skip
    theirs.load_state_dict(their_state)
    state = {}
    for key, value in their_state.items():
        for a, b in names.items():
            key = key.replace(a, b)
        state[key] = value
    assert set(state) == set(ours.refine.state_dict(prefix="refine.")) and (refine == "none") == (not state)
    ours.refine.load_state_dict({k[len("refine.") :]: v for k, v in state.items()})
    with torch.no_grad():
        expected = theirs(list(levels.values()))
        got = ours(torch.zeros(1))
    for name, t in zip(levels, expected):
        diff = float((got[name] - t).abs().max())
        print(f"[parity] BFP refine {refine}, float64, {name}: max|diff| {diff:.3g}")
        assert diff < 1e-12, (refine, name, diff)
    if refine == "conv":  # the conv alone, without the reference's ReLU, differs
        ours.refine = ours.refine.conv
        with torch.no_grad():
            assert float((ours(torch.zeros(1))["p3"] - expected[1]).abs().max()) > 0.1
