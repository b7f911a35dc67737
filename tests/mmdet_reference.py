"""mmdetection 3.3 models beside ours, for the tests against the reference implementation.

Used by tests/test_mmdet_parity.py (the published COCO layouts) and tests/test_mmdet_layouts.py
(the layouts users train: basic blocks, GN, other widths, with the config in the checkpoint).
mmdetection builds each model from a config, every weight, bias and norm statistic is drawn
at random with a fixed seed, mmengine's ``save_checkpoint`` saves it as its runner does, and
``python -m libra_rcnn.convert_mmdet`` converts the file. The ``check_*`` functions compare both
models' outputs on the same normalised input: the relative difference
``max |ours - theirs| / max |theirs|`` of each must be at most ``RTOL`` (float32).
"""
import logging
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes

from libra_rcnn.converters import main

from conftest import REFERENCE_ENV, load_cfg, require_reference_env

REPO = Path(__file__).resolve().parents[1]
HARNESS_CONFIGS = REPO / "benchmarks" / "reference" / "configs"
RTOL = 1e-4
H, W = 128, 160


@pytest.fixture(scope="module")
def mmdet_env():
    """mmdetection's modules importable (benchmarks.reference.env), removed from sys.path after."""
    require_reference_env()
    sys.path.insert(0, str(REPO))
    from benchmarks.reference.env import use_reference_env

    use_reference_env()
    yield
    sys.path.remove(str(REFERENCE_ENV))
    sys.path.remove(str(REPO))


@pytest.fixture(scope="module")
def image():
    """A normalised input (1, 3, 128, 160), the same for both models."""
    return torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(5))


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Every parameter and norm statistic of ``model`` drawn at random, in place.

    Weights ~ N(0, 1 / fan_in) (activations keep their scale), biases, norm shifts and means
    ~ N(0, 0.1^2), norm scales and variances ~ U(0.5, 1.5). The BFP non-local block's theta
    and phi are then scaled by 1/20, so that its attention logits stay below ~100 and the
    softmax weighs several positions: at full scale they reach 4e4 on ResNeXt-101's features,
    a one-hot softmax whose float32 rounding alone moves the output by 2e-4 (float64: 3e-13).
    """
    norms = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm)
    scales = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, norms)}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var") or name in scales:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(t[0].numel()))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            if ".refine.theta." in name or ".refine.phi." in name:
                t.mul_(0.05)


def mmdet_config(config: str, changes: Optional[dict] = None):
    """An mmengine Config: ``config`` is a file of benchmarks/reference/configs/ (``name.py``) or
    one mmdetection bundles (``folder/name``); ``changes`` are merged with dotted keys."""
    import mmdet
    from mmengine.config import Config

    harness = HARNESS_CONFIGS / config
    path = harness if harness.is_file() else Path(mmdet.__file__).parent / ".mim" / "configs" / f"{config}.py"
    cfg = Config.fromfile(str(path))
    if changes:
        cfg.merge_from_dict(changes, allow_list_keys=True)
    return cfg


def build_mmdet(cfg, seed: int = 0):
    """mmdetection's model of the Config ``cfg``, random weights, eval mode, CPU."""
    from mmdet.registry import MODELS

    cfg.model.backbone.init_cfg = None
    if "roi_head" in cfg.model:  # torchvision's RoIAlign kernel (mmcv-lite has no compiled ops)
        cfg.model.roi_head.bbox_roi_extractor.roi_layer.use_torchvision = True
    model = MODELS.build(cfg.model)
    randomize_(model, seed)
    return model.eval()


def save_mmdet(model, path, cfg=None, classes: Optional[Sequence[str]] = None) -> None:
    """``model`` saved by mmengine's ``save_checkpoint`` as its runner does: weights, meta and
    the message hub (objects of mmengine's classes, which ``weights_only`` loading refuses).

    With ``cfg``, ``meta["cfg"]`` holds its text as mmengine's runner stores it; with
    ``classes``, ``meta["dataset_meta"]`` names them.
    """
    import mmdet
    from mmengine.logging import MessageHub
    from mmengine.runner.checkpoint import save_checkpoint

    hub = MessageHub.get_instance("parity")
    hub.update_scalar("train/loss", 1.0)
    meta = {"mmdet_version": mmdet.__version__, "epoch": 12}
    if cfg is not None:
        meta["cfg"] = cfg.pretty_text
    if classes is not None:
        meta["dataset_meta"] = {"classes": tuple(classes), "palette": [(0, 0, 0)] * len(classes)}
    save_checkpoint({"meta": meta, "state_dict": model.state_dict(), "message_hub": hub.state_dict()}, str(path))


def save_and_convert(model, folder: Path, cfg=None, classes=None) -> Path:
    """mmengine's checkpoint of ``model`` converted by the command; returns the ``.pth`` written
    (its config is the ``.yaml`` beside it)."""
    mmdet_file, d2_file = folder / "mmdet.pth", folder / "d2.pth"
    save_mmdet(model, mmdet_file, cfg, classes)
    assert main([str(mmdet_file), str(d2_file)]) == 0
    assert d2_file.with_suffix(".yaml").is_file()
    return d2_file


def load_d2(config_file, weights, caplog):
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


def check_features(name: str, theirs_model, ours_model, image: torch.Tensor) -> None:
    """Every FPN (or BFP) level of both models."""
    with torch.no_grad():
        theirs = theirs_model.extract_feat(image)
        ours = ours_model.backbone(image)
    names = sorted(ours, key=lambda k: int(k[1:]))
    assert len(names) == len(theirs) == 5
    for level, t in zip(names, theirs):
        compare(f"{name} feature {level}", ours[level], t)


def _per_anchor(t: torch.Tensor, n: int) -> torch.Tensor:
    """(1, A * n, H, W) head output -> (H * W * A, n), in the library's own anchor order."""
    return t[0].permute(1, 2, 0).reshape(-1, n)


def _pair_anchors(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """For each of our anchors (N, 4), the index of mmdetection's anchor with the same
    coordinates: the pairing checks the converter's channel permutation independently of it."""
    distance, match = torch.cdist(ours, theirs, p=1).min(dim=1)
    assert float(distance.max()) < 1e-3 and match.unique().numel() == match.numel()
    return match


def check_rpn_and_box_head(name: str, theirs_model, ours_model, image: torch.Tensor) -> None:
    """RPN logits and deltas per anchor (paired by coordinates), pooled RoI features and the box
    head's outputs."""
    with torch.no_grad():
        feats = theirs_model.extract_feat(image)
        features = ours_model.backbone(image)
        rpn_in = [features[f] for f in ours_model.proposal_generator.in_features]
        (their_logits, their_deltas) = theirs_model.rpn_head(feats)
        our_logits, our_deltas = ours_model.proposal_generator.rpn_head(rpn_in)
        their_anchors = theirs_model.rpn_head.prior_generator.grid_priors([f.shape[-2:] for f in feats], device="cpu")
        our_anchors = ours_model.proposal_generator.anchor_generator(rpn_in)
        for level in range(len(rpn_in)):
            match = _pair_anchors(our_anchors[level].tensor, their_anchors[level])
            tl, td = _per_anchor(their_logits[level], 1), _per_anchor(their_deltas[level], 4)
            ol, od = _per_anchor(our_logits[level], 1), _per_anchor(our_deltas[level], 4)
            compare(f"{name} RPN logits P{level + 2}", ol, tl[match])
            compare(f"{name} RPN deltas P{level + 2}", od, td[match])
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
        compare(f"{name} pooled RoI features", our_pooled, their_pooled)
        their_scores, their_box_deltas = theirs_model.roi_head.bbox_head(their_pooled)
        our_scores, our_box_deltas = ours_model.roi_heads.box_predictor(ours_model.roi_heads.box_head(their_pooled))
    compare(f"{name} box head scores", our_scores, their_scores)
    compare(f"{name} box head deltas", our_box_deltas, their_box_deltas)


def check_retinanet_head(name: str, theirs_model, ours_model, image: torch.Tensor) -> None:
    """Logits, deltas and decoded boxes per anchor, the anchors paired by their coordinates.

    mmdetection's anchors come from its own prior generator, ours from Detectron2's: pairing
    them by coordinates checks the converter's channel permutation independently of it.
    """
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
        tl, td = _per_anchor(their_logits[level], k), _per_anchor(their_deltas[level], 4)
        ol, od = _per_anchor(our_logits[level], k), _per_anchor(our_deltas[level], 4)
        ta, oa = their_anchors[level], our_anchors[level].tensor
        match = _pair_anchors(oa, ta)
        where = f"{name} P{level + 3}"
        compare(f"{where} logits", ol, tl[match])
        compare(f"{where} deltas", od, td[match])
        their_boxes = head.bbox_coder.decode(ta[match], td[match])
        our_boxes = ours_model.box2box_transform.apply_deltas(od, oa)
        # mmdetection also clamps dw, dh from below at -log(1000/16) (boxes < 1.6 % of their
        # anchor's side), Detectron2 does not: such boxes differ, every other box agrees.
        shrunk = (od[:, 2:] < -math.log(1000 / 16)).any(dim=1)
        compare(f"{where} decoded boxes ({int(shrunk.sum())} of {len(od)} shrunk below 1.6 % left out)",
                our_boxes[~shrunk], their_boxes[~shrunk])  # fmt: skip
        ours_wh, theirs_wh = (b[shrunk, 2:] - b[shrunk, :2] for b in (our_boxes, their_boxes))
        assert bool((ours_wh <= theirs_wh * (1 + RTOL)).all())
