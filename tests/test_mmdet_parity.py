"""Converted mmdetection checkpoints compute what mmdetection computes (docs/pretrained_mmdet.md).

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
import logging
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
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes

from libra_rcnn import build_fashion_scenes
from libra_rcnn.convert_mmdet import ConversionError, anchor_order, convert_state_dict, main, suggest_config

from conftest import REFERENCE_ENV, FixedPyramid, load_cfg, require_reference_env, train_net

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-4
H, W = 128, 160
D2 = "configs/COCO-Detection/mmdet"
MODELS = {  # mmdetection config: our config
    "libra_rcnn/libra-faster-rcnn_r50_fpn_1x_coco": f"{D2}/libra-faster-rcnn_r50_fpn_1x_coco.yaml",
    "faster_rcnn/faster-rcnn_r50_fpn_1x_coco": f"{D2}/faster-rcnn_r50_fpn_1x_coco.yaml",
    "libra_rcnn/libra-retinanet_r50_fpn_1x_coco": f"{D2}/libra-retinanet_r50_fpn_1x_coco.yaml",
    "retinanet/retinanet_r50_fpn_1x_coco": f"{D2}/retinanet_r50_fpn_1x_coco.yaml",
    "libra_rcnn/libra-faster-rcnn_r101_fpn_1x_coco": f"{D2}/libra-faster-rcnn_r101_fpn_1x_coco.yaml",
    "libra_rcnn/libra-faster-rcnn_x101-64x4d_fpn_1x_coco": f"{D2}/libra-faster-rcnn_x101-64x4d_fpn_1x_coco.yaml",
}
R50 = list(MODELS)[:4]


@pytest.fixture(scope="module")
def mmdet_env():
    """mmdetection's modules importable (the reference environment appended to sys.path)."""
    require_reference_env()
    sys.path.append(str(REFERENCE_ENV))
    sys.path.insert(0, str(REPO))
    from benchmarks.reference_sampler import _MissingOps

    sys.modules.setdefault("mmcv._ext", _MissingOps("mmcv._ext"))
    from mmdet.utils import register_all_modules

    register_all_modules()
    yield
    sys.path.remove(str(REFERENCE_ENV))
    sys.path.remove(str(REPO))


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Every parameter and batch-norm statistic of ``model`` drawn at random, in place.

    Weights ~ N(0, 1 / fan_in) (activations keep their scale), biases and BN shifts and means
    ~ N(0, 0.1^2), BN scales and variances ~ U(0.5, 1.5). The BFP non-local block's theta
    and phi are then scaled by 1/20, so that its attention logits stay below ~100 and the
    softmax weighs several positions: at full scale they reach 4e4 on ResNeXt-101's features,
    a one-hot softmax whose float32 rounding alone moves the output by 2e-4 (float64: 3e-13).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            if not t.is_floating_point():
                continue
            if name.endswith(("running_var", "bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(t[0].numel()))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            if ".refine.theta." in name or ".refine.phi." in name:
                t.mul_(0.05)


def build_mmdet(config: str, seed: int = 0):
    """mmdetection's model of its bundled ``config``, random weights, eval mode, CPU."""
    import mmdet
    from mmengine.config import Config
    from mmdet.registry import MODELS as MMDET_MODELS

    cfg = Config.fromfile(str(Path(mmdet.__file__).parent / ".mim" / "configs" / f"{config}.py"))
    cfg.model.backbone.init_cfg = None
    if "roi_head" in cfg.model:  # torchvision's RoIAlign kernel (mmcv-lite has no compiled ops)
        cfg.model.roi_head.bbox_roi_extractor.roi_layer.use_torchvision = True
    model = MMDET_MODELS.build(cfg.model)
    randomize_(model, seed)
    return model.eval()


def save_mmdet(model, path):
    """``model`` saved by mmengine's ``save_checkpoint`` as its runner does: weights, meta and
    the message hub (objects of mmengine's classes, which ``weights_only`` loading refuses)."""
    import mmdet
    from mmengine.logging import MessageHub
    from mmengine.runner.checkpoint import save_checkpoint

    hub = MessageHub.get_instance("parity")
    hub.update_scalar("train/loss", 1.0)
    save_checkpoint({"meta": {"mmdet_version": mmdet.__version__, "epoch": 12}, "state_dict": model.state_dict(),
                     "message_hub": hub.state_dict()}, str(path))  # fmt: skip


def save_and_convert(model, tmp_path):
    """mmengine's checkpoint of ``model`` converted by the command; returns the output path."""
    mmdet_file, d2_file = tmp_path / "mmdet.pth", tmp_path / "d2.pth"
    save_mmdet(model, mmdet_file)
    assert main([str(mmdet_file), str(d2_file)]) == 0
    return d2_file


def load_d2(config_file: str, weights, caplog):
    """Our model of ``config_file`` with ``weights`` loaded by DetectionCheckpointer (strictly)."""
    model = build_model(load_cfg(config_file, ["MODEL.DEVICE", "cpu"])).eval()
    with caplog.at_level(logging.INFO):
        DetectionCheckpointer(model).load(str(weights))
    assert "not found in the checkpoint" not in caplog.text and "not used by the model" not in caplog.text
    state = torch.load(weights, weights_only=True)["model"]
    assert set(state) == set(model.state_dict())  # no missing, no unexpected keys
    return model


def compare(report: str, ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Relative difference max|ours - theirs| / max|theirs|, printed; asserts shapes and <= RTOL."""
    assert ours.shape == theirs.shape, (report, ours.shape, theirs.shape)
    assert float(theirs.abs().max()) > 0, f"{report}: degenerate (all zero) reference output"
    diff = float((ours - theirs).abs().max())
    rel = diff / float(theirs.abs().max())
    print(f"[parity] {report}: max|diff| {diff:.3g}, max|ref| {float(theirs.abs().max()):.3g}, relative {rel:.3g}")
    assert rel <= RTOL, report
    return rel


@pytest.fixture(scope="module")
def pairs(mmdet_env, tmp_path_factory):
    """mmdet config -> (mmdet model, converted checkpoint path), built once per model."""
    cache = {}

    def get(config):
        if config not in cache:
            model = build_mmdet(config, seed=len(cache))
            cache[config] = (model, save_and_convert(model, tmp_path_factory.mktemp("ckpt")))
        return cache[config]

    return get


@pytest.fixture(scope="module")
def image():
    """A normalised input (1, 3, 128, 160), the same for both models."""
    return torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("config", list(MODELS))
def test_features_match_at_every_level(config, pairs, image, caplog):
    theirs_model, weights = pairs(config)
    ours_model = load_d2(MODELS[config], weights, caplog)
    with torch.no_grad():
        theirs = theirs_model.extract_feat(image)
        ours = ours_model.backbone(image)
    names = sorted(ours, key=lambda k: int(k[1:]))
    assert len(names) == len(theirs) == 5
    for name, t in zip(names, theirs):
        compare(f"{config.split('/')[1]} feature {name}", ours[name], t)


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


@pytest.mark.parametrize("config", R50[:2])
def test_rpn_and_box_head_match(config, pairs, image, caplog):
    theirs_model, weights = pairs(config)
    ours_model = load_d2(MODELS[config], weights, caplog)
    short = config.split("/")[1]
    with torch.no_grad():
        feats = theirs_model.extract_feat(image)
        features = ours_model.backbone(image)
        rpn_in = [features[f] for f in ours_model.proposal_generator.in_features]
        (their_logits, their_deltas) = theirs_model.rpn_head(feats)
        our_logits, our_deltas = ours_model.proposal_generator.rpn_head(rpn_in)
        for level, (a, b, c, d) in enumerate(zip(our_logits, their_logits, our_deltas, their_deltas)):
            compare(f"{short} RPN logits P{level + 2}", a, b)
            compare(f"{short} RPN deltas P{level + 2}", c, d)
        # RoIs of sides 8 to 900 px (beyond the image too), so that each level P2-P5 pools some.
        g = torch.Generator().manual_seed(2)
        xy = torch.rand(64, 2, generator=g) * torch.tensor([W, H])
        wh = torch.exp(math.log(8) + torch.rand(64, 2, generator=g) * math.log(900 / 8))
        boxes = torch.cat([xy, xy + wh], dim=1)
        rois = torch.cat([torch.zeros(64, 1), boxes], dim=1)
        extractor = theirs_model.roi_head.bbox_roi_extractor
        levels = extractor.map_roi_levels(rois, 4)
        assert set(levels.tolist()) == {0, 1, 2, 3}
        pooler = ours_model.roi_heads.box_pooler
        assert torch.equal(assign_boxes_to_levels([Boxes(boxes)], 2, 5, 224, 4), levels)
        their_pooled = extractor(feats[:4], rois)
        our_pooled = pooler([features[f] for f in ours_model.roi_heads.box_in_features], [Boxes(boxes)])
        compare(f"{short} pooled RoI features", our_pooled, their_pooled)
        their_scores, their_box_deltas = theirs_model.roi_head.bbox_head(their_pooled)
        our_scores, our_box_deltas = ours_model.roi_heads.box_predictor(ours_model.roi_heads.box_head(their_pooled))
    compare(f"{short} box head scores", our_scores, their_scores)
    compare(f"{short} box head deltas", our_box_deltas, their_box_deltas)


@pytest.mark.parametrize("config", R50[2:])
def test_retinanet_head_matches_anchor_by_anchor(config, pairs, image, caplog):
    """Logits, deltas and decoded boxes per anchor, the anchors paired by their coordinates.

    mmdetection's anchors come from its own prior generator, ours from Detectron2's: pairing
    them by coordinates checks the converter's channel permutation independently of it.
    """
    theirs_model, weights = pairs(config)
    ours_model = load_d2(MODELS[config], weights, caplog)
    short = config.split("/")[1]
    head = theirs_model.bbox_head
    with torch.no_grad():
        feats = theirs_model.extract_feat(image)
        features = ours_model.backbone(image)
        their_logits, their_deltas = head(feats)
        our_logits, our_deltas = ours_model.head([features[f] for f in ours_model.head_in_features])
        their_anchors = head.prior_generator.grid_priors([f.shape[-2:] for f in feats], device="cpu")
        our_anchors = ours_model.anchor_generator([features[f] for f in ours_model.head_in_features])
    k = head.cls_out_channels
    for level in range(5):
        # (H * W * A, K) and (H * W * A, 4) in each library's anchor order.
        tl, td = (t[level][0].permute(1, 2, 0).reshape(-1, n) for t, n in ((their_logits, k), (their_deltas, 4)))
        ol, od = (t[level][0].permute(1, 2, 0).reshape(-1, n) for t, n in ((our_logits, k), (our_deltas, 4)))
        ta, oa = their_anchors[level], our_anchors[level].tensor
        distance, match = torch.cdist(oa, ta, p=1).min(dim=1)
        assert float(distance.max()) < 1e-3 and match.unique().numel() == match.numel()
        name = f"{short} P{level + 3}"
        compare(f"{name} logits", ol, tl[match])
        compare(f"{name} deltas", od, td[match])
        their_boxes = head.bbox_coder.decode(ta[match], td[match])
        our_boxes = ours_model.box2box_transform.apply_deltas(od, oa)
        # mmdetection also clamps dw, dh from below at -log(1000/16) (boxes < 1.6 % of their
        # anchor's side), Detectron2 does not: such boxes differ, every other box agrees.
        shrunk = (od[:, 2:] < -math.log(1000 / 16)).any(dim=1)
        compare(f"{name} decoded boxes ({int(shrunk.sum())} of {len(od)} shrunk below 1.6 % left out)",
                our_boxes[~shrunk], their_boxes[~shrunk])  # fmt: skip
        ours_wh, theirs_wh = (b[shrunk, 2:] - b[shrunk, :2] for b in (our_boxes, their_boxes))
        assert bool((ours_wh <= theirs_wh * (1 + RTOL)).all())


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
    assert main([str(v1), str(tmp_path / "out.pth")]) == 1
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
    """mmengine's file -> the command -> train_net.py --eval-only on coco_2017_val (COCO layout)."""
    _, d2_file = pairs(R50[0])
    mmdet_file, converted = d2_file.parent / "mmdet.pth", tmp_path / "converted.pth"
    proc = subprocess.run([sys.executable, "-m", "libra_rcnn.convert_mmdet", str(mmdet_file), str(converted)],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"config: {MODELS[R50[0]]}" in proc.stdout
    root = coco_layout_dataset(tmp_path / "datasets", num_images=3, size=128)
    run = train_net("--config-file", MODELS[R50[0]], "--eval-only", "MODEL.WEIGHTS", str(converted),
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


@pytest.mark.parametrize(
    "layout,config,overrides",
    [(dict(bfp=True, kind="faster-rcnn", depth=101, groups=64, width_per_group=4, refine="non_local", num_classes=80),
      "libra-faster-rcnn_x101-64x4d_fpn_1x_coco.yaml", []),
     (dict(bfp=False, kind="retinanet", depth=101, groups=1, width_per_group=64, refine="none", num_classes=80),
      "retinanet_r50_fpn_1x_coco.yaml",
      ["MODEL.RESNETS.DEPTH", "101", "MODEL.RESNETS.NUM_GROUPS", "1", "MODEL.RESNETS.WIDTH_PER_GROUP", "64"]),
     (dict(bfp=True, kind="faster-rcnn", depth=50, groups=1, width_per_group=64, refine="conv", num_classes=20),
      "libra-faster-rcnn_r50_fpn_1x_coco.yaml",
      ["MODEL.LIBRA.BFP.REFINE_TYPE", "conv", "MODEL.ROI_HEADS.NUM_CLASSES", "20"])],
)  # fmt: skip
def test_the_suggested_config_and_overrides_build_the_checkpoints_model(layout, config, overrides):
    assert suggest_config(layout) == (f"{D2}/{config}", overrides)
    cfg = load_cfg(f"{D2}/{config}", overrides)
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.NUM_GROUPS) == (layout["depth"], layout["groups"])
