"""The heads of a converted model's Detectron2 config: the RPN and the RoI box head of a (Libra)
Faster R-CNN, the head of a (Libra) RetinaNet, the anchors, the box losses and the class names."""
from typing import Optional

from .errors import ConversionError
from .mmdet_layout import WeightLayout
from .mmdet_plan import (
    LEVELS,
    ConfigPlan,
    MmdetConfig,
    coder_weights,
    d2_norm,
    nms_threshold,
    set_or_assume,
    test_cfg,
)

__all__ = ["rpn_settings", "roi_head_settings", "retina_head_settings", "class_settings"]


def _anchors(plan: ConfigPlan, head: dict, key: str, num_anchors: int, retina: bool) -> None:
    """MODEL.ANCHOR_GENERATOR.* from an mmdetection AnchorGenerator (or its defaults)."""
    gen = head.get("anchor_generator") if head else None
    levels = plan.levels
    strides = [{v: k for k, v in LEVELS.items()}[name] for name in levels]
    if gen:
        gkey = f"{key}.anchor_generator"
        if gen.get("type", "AnchorGenerator") not in ("AnchorGenerator", "mmdet.AnchorGenerator"):
            raise ConversionError(f"{gkey}.type = {gen.get('type')!r}: Detectron2 has the plain anchor generator")
        if [s if isinstance(s, (int, float)) else s[0] for s in gen.get("strides", strides)] != strides:
            raise ConversionError(f"{gkey}.strides = {gen.get('strides')}: the FPN levels have strides {strides}")
        base = gen.get("base_sizes") or strides
        if gen.get("scales") is not None:
            scales = [float(s) for s in gen["scales"]]
        else:
            octave, per = gen.get("octave_base_scale"), gen.get("scales_per_octave")
            if octave is None or per is None:
                raise ConversionError(f"{gkey}: neither scales nor octave_base_scale / scales_per_octave")
            scales = [float(octave) * 2 ** (i / per) for i in range(per)]
        ratios = [float(r) for r in gen.get("ratios", [0.5, 1.0, 2.0])]
        if gen.get("scale_major", True) is False:
            raise ConversionError(f"{gkey}.scale_major = False: not mirrored")
        offset = float(gen.get("center_offset", 0.0))
        source = gkey
    else:
        ratios = [0.5, 1.0, 2.0]
        scales = [4.0 * 2 ** (i / 3) for i in range(3)] if retina else [8.0]
        base, offset, source = strides, 0.0, None
        plan.assumptions.append(
            f"anchors: mmdetection's default {'RetinaNet' if retina else 'RPN'} anchors, scales "
            f"{[round(s, 4) for s in scales]} x stride, ratios {ratios}"
        )
    if len(ratios) * len(scales) != num_anchors:
        raise ConversionError(
            f"{key}: {len(scales)} scales x {len(ratios)} ratios, but the weights predict {num_anchors} anchors per location"
        )
    sizes = [[b * s for s in scales] for b in base]
    plan.num_ratios, plan.num_scales = len(ratios), len(scales)
    set_ = plan.set if source else (lambda k, v, _: plan.set(k, v, "assumed"))
    set_("MODEL.ANCHOR_GENERATOR.SIZES", sizes, f"{source}.scales x strides" if source else "")
    set_("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [ratios], f"{source}.ratios" if source else "")
    set_("MODEL.ANCHOR_GENERATOR.OFFSET", offset, f"{source}.center_offset" if source else "")


def _rpn_sampler(plan: ConfigPlan, cfg: MmdetConfig, layout: WeightLayout, model: str) -> None:
    """Detectron2's RPN, or ``LibraRPN`` with the checkpoint's bound on negatives per positive
    (``train_cfg.rpn.sampler.neg_pos_ub``), so that fine-tuning samples anchors as it was trained."""
    skey = f"{model}train_cfg.rpn.sampler"
    sampler = cfg.get(skey)
    if sampler is None:
        skey, sampler = "train_cfg.rpn.sampler", cfg.get("train_cfg.rpn.sampler")
    if isinstance(sampler, dict):
        bound = float(sampler.get("neg_pos_ub", -1))
        source = f"{skey}.neg_pos_ub"
        plan.set("MODEL.PROPOSAL_GENERATOR.NAME", "LibraRPN" if bound >= 0 else "RPN", source)
        plan.set("MODEL.LIBRA.RPN.NEG_POS_UB", bound if bound >= 0 else -1.0, source)
    elif layout.bfp:
        plan.assume("MODEL.PROPOSAL_GENERATOR.NAME", "LibraRPN", "mmdetection's Libra R-CNN RPN sampler, for fine-tuning")
        plan.assume("MODEL.LIBRA.RPN.NEG_POS_UB", 5.0, "mmdetection's Libra R-CNN RPN sampler (neg_pos_ub=5)")
    else:
        plan.assume("MODEL.PROPOSAL_GENERATOR.NAME", "RPN", "mmdetection's default RPN sampler (no bound)")
        plan.assume("MODEL.LIBRA.RPN.NEG_POS_UB", -1.0, "mmdetection's default RPN sampler (no bound)")


def rpn_settings(plan: ConfigPlan, cfg: MmdetConfig, layout: WeightLayout, model: str) -> None:
    key = model + "rpn_head"
    head = cfg.get(key) or {}
    levels = plan.levels
    if head.get("loss_cls", {}).get("use_sigmoid", True) is False:
        raise ConversionError(f"{key}.loss_cls.use_sigmoid = False: Detectron2's RPN has one sigmoid logit per anchor")
    _rpn_sampler(plan, cfg, layout, model)
    plan.set("MODEL.RPN.IN_FEATURES", levels, "weights: the FPN levels")
    if layout.rcnn.rpn_channels != layout.fpn.channels:
        plan.set("MODEL.RPN.CONV_DIMS", [layout.rcnn.rpn_channels], "weights: rpn_head.rpn_conv")
    _anchors(plan, head, key, layout.rcnn.rpn_anchors, retina=False)
    weights, source = coder_weights(head.get("bbox_coder"), key, [1.0] * 4)
    set_or_assume(plan, "MODEL.RPN.BBOX_REG_WEIGHTS", weights if source else None, source, weights, "mmdetection's RPN coder")
    test, tkey = test_cfg(cfg, model, "rpn")
    default = "mmdetection's default RPN test settings"
    set_or_assume(plan, "MODEL.RPN.PRE_NMS_TOPK_TEST", test.get("nms_pre"), f"{tkey}.nms_pre", 1000, default)
    post = test.get("max_per_img", test.get("max_num"))
    set_or_assume(plan, "MODEL.RPN.POST_NMS_TOPK_TEST", post, f"{tkey}.max_per_img", 1000, default)
    thr = nms_threshold(test.get("nms"), f"{tkey}.nms") if "nms" in test else test.get("nms_thr")
    set_or_assume(plan, "MODEL.RPN.NMS_THRESH", thr, f"{tkey}.nms.iou_threshold", 0.7, default)
    if test.get("nms_across_levels"):
        raise ConversionError(f"{tkey}.nms_across_levels = True: Detectron2's RPN applies NMS per level")
    set_or_assume(plan, "MODEL.PROPOSAL_GENERATOR.MIN_SIZE", test.get("min_bbox_size"), f"{tkey}.min_bbox_size", 0, default)
    proposal = cfg.get(model + "train_cfg.rpn_proposal") or cfg.get("train_cfg.rpn_proposal")
    if proposal:
        pkey = (model if cfg.get(model + "train_cfg.rpn_proposal") else "") + "train_cfg.rpn_proposal"
        plan.set("MODEL.RPN.PRE_NMS_TOPK_TRAIN", proposal.get("nms_pre", 2000), f"{pkey}.nms_pre")
        plan.set("MODEL.RPN.POST_NMS_TOPK_TRAIN", proposal.get("max_per_img", proposal.get("max_num", 1000)),
                 f"{pkey}.max_per_img")  # fmt: skip
    _loss(plan, head.get("loss_bbox"), f"{key}.loss_bbox", "MODEL.RPN.BBOX_REG_LOSS_TYPE", "MODEL.RPN.SMOOTH_L1_BETA")


def _loss(plan: ConfigPlan, loss: Optional[dict], key: str, type_key: str, beta_key: str,
          balanced_l1: Optional[str] = None) -> None:
    """A box loss for fine-tuning, or a line in ``not_carried``; ``balanced_l1`` is the config
    node of the head's balanced L1 parameters (None: the head has none)."""
    if not loss:
        return
    kind = str(loss.get("type", "")).replace("mmdet.", "")
    if kind == "L1Loss":
        plan.set(type_key, "smooth_l1", f"{key}.type (L1 = smooth L1 with beta 0)")
        plan.set(beta_key, 0.0, f"{key}.type")
    elif kind == "SmoothL1Loss":
        plan.set(type_key, "smooth_l1", f"{key}.type")
        plan.set(beta_key, float(loss.get("beta", 1.0)), f"{key}.beta")
    elif kind == "BalancedL1Loss" and balanced_l1:
        plan.set(type_key, "balanced_l1", f"{key}.type")
        for name, default in (("alpha", 0.5), ("gamma", 1.5), ("beta", 1.0)):
            plan.set(f"{balanced_l1}.{name.upper()}", float(loss.get(name, default)), f"{key}.{name}")
        plan.set(f"{balanced_l1}.VARIANT", "mmdet", f"{key}.type (mmdetection's formula)")
    else:
        plan.not_carried.append(f"{key} = {kind} (training only)")
    if float(loss.get("loss_weight", 1.0)) != 1.0:
        plan.not_carried.append(f"{key}.loss_weight = {loss['loss_weight']} (training only)")


def _coder_and_test(plan: ConfigPlan, cfg: MmdetConfig, model: str, head: dict, key: str, weights_node: str,
                    test_node: str, part: str, stds: list, coder: str, name: str):
    """A head's box coder weights (``<weights_node>.BBOX_REG_WEIGHTS``) and its test settings
    (``<test_node>.SCORE_THRESH_TEST``, ``NMS_THRESH_TEST``, ``TEST.DETECTIONS_PER_IMAGE``), each
    from the config or assumed as mmdetection's default; returns ``(test_cfg, its key)``."""
    weights, source = coder_weights(head.get("bbox_coder") if head else None, key, stds)
    set_or_assume(plan, f"{weights_node}.BBOX_REG_WEIGHTS", weights if source else None, source, weights,
                  f"mmdetection's {coder}")  # fmt: skip
    test, tkey = test_cfg(cfg, model, part)
    default = f"mmdetection's default {name} test settings"
    set_or_assume(plan, f"{test_node}.SCORE_THRESH_TEST", test.get("score_thr"), f"{tkey}.score_thr", 0.05, default)
    thr = nms_threshold(test.get("nms"), f"{tkey}.nms")
    set_or_assume(plan, f"{test_node}.NMS_THRESH_TEST", thr, f"{tkey}.nms.iou_threshold", 0.5, default)
    set_or_assume(plan, "TEST.DETECTIONS_PER_IMAGE", test.get("max_per_img"), f"{tkey}.max_per_img", 100, default)
    return test, tkey


def roi_head_settings(plan: ConfigPlan, cfg: MmdetConfig, layout: WeightLayout, model: str) -> None:
    key = model + "roi_head"
    roi = cfg.get(key) or {}
    if roi and roi.get("type") not in ("StandardRoIHead", "mmdet.StandardRoIHead"):
        raise ConversionError(f"{key}.type = {roi.get('type')!r}: the converter mirrors StandardRoIHead")
    extractor = roi.get("bbox_roi_extractor", {}) if roi else {}
    ekey = f"{key}.bbox_roi_extractor"
    strides = extractor.get("featmap_strides") if extractor else None
    in_features = [LEVELS[s] for s in strides] if strides else plan.levels[:4]
    if not strides:
        plan.assumptions.append(f"{ekey}.featmap_strides = [4, 8, 16, 32] (P2-P5)")
    if extractor and extractor.get("finest_scale", 56) != 56:
        raise ConversionError(f"{ekey}.finest_scale = {extractor['finest_scale']}: Detectron2's level rule has 224 at P4 (56)")
    libra = layout.bfp
    bbox = roi.get("bbox_head", {}) if roi else {}
    bkey = f"{key}.bbox_head"
    sampler = cfg.get(model + "train_cfg.rcnn.sampler") or cfg.get("train_cfg.rcnn.sampler") or {}
    iou_balanced = sampler.get("neg_sampler", {}).get("type") == "IoUBalancedNegSampler"
    if cfg:
        libra = iou_balanced or str(bbox.get("loss_bbox", {}).get("type")) == "BalancedL1Loss"
    plan.set("MODEL.META_ARCHITECTURE", "GeneralizedRCNN", f"{model}type")
    plan.set("MODEL.ROI_HEADS.NAME", "LibraROIHeads" if libra else "StandardROIHeads",
             f"{model}train_cfg.rcnn.sampler" if cfg else "weights: neck.1 (the BFP: a Libra R-CNN)")  # fmt: skip
    plan.set("MODEL.ROI_HEADS.IN_FEATURES", in_features, f"{ekey}.featmap_strides" if strides else "assumed")
    plan.set("MODEL.ROI_HEADS.NUM_CLASSES", layout.num_classes, "weights: roi_head.bbox_head.fc_cls")
    layer = extractor.get("roi_layer", {}) if extractor else {}
    if layer and layer.get("type", "RoIAlign") not in ("RoIAlign", "mmcv.RoIAlign"):
        raise ConversionError(f"{ekey}.roi_layer.type = {layer.get('type')!r}: Detectron2 pools with RoIAlign")
    if layer and layer.get("pool_mode", "avg") != "avg":
        raise ConversionError(f"{ekey}.roi_layer.pool_mode = {layer['pool_mode']!r}: Detectron2's RoIAlign averages")
    resolution = layer.get("output_size", layout.rcnn.box_resolution) if layer else layout.rcnn.box_resolution
    if resolution != layout.rcnn.box_resolution:
        raise ConversionError(f"{ekey}.roi_layer.output_size = {resolution} but the box head takes {layout.rcnn.box_resolution}")
    plan.set("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", resolution, "weights: roi_head.bbox_head's first layer")
    set_or_assume(plan, "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", layer.get("sampling_ratio") if layer else None,
                   f"{ekey}.roi_layer.sampling_ratio", 0, "mmdetection's default RoIAlign")  # fmt: skip
    aligned = layer.get("aligned", True) if layer else None
    set_or_assume(plan, "MODEL.ROI_BOX_HEAD.POOLER_TYPE", None if aligned is None else ("ROIAlignV2" if aligned else "ROIAlign"),
                   f"{ekey}.roi_layer.aligned", "ROIAlignV2", "mmdetection's default RoIAlign(aligned=True)")  # fmt: skip
    if bbox:
        kind = str(bbox.get("type")).replace("mmdet.", "")
        if kind not in ("Shared2FCBBoxHead", "Shared4Conv1FCBBoxHead", "ConvFCBBoxHead"):
            raise ConversionError(f"{bkey}.type = {kind!r}: the converter mirrors (Shared)ConvFCBBoxHead")
        for name in ("num_cls_convs", "num_cls_fcs", "num_reg_convs", "num_reg_fcs"):
            if bbox.get(name, 0):
                raise ConversionError(f"{bkey}.{name} = {bbox[name]}: Detectron2's box head has shared layers only")
        if bbox.get("with_avg_pool"):
            raise ConversionError(f"{bkey}.with_avg_pool = True: not in Detectron2's box head")
        if bbox.get("loss_cls", {}).get("use_sigmoid"):
            raise ConversionError(f"{bkey}.loss_cls.use_sigmoid = True: Detectron2's box head uses softmax")
    plan.set("MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead", "weights: roi_head.bbox_head")
    plan.set("MODEL.ROI_BOX_HEAD.NUM_CONV", layout.rcnn.box_convs, "weights: roi_head.bbox_head.shared_convs")
    if layout.rcnn.box_convs:
        plan.set("MODEL.ROI_BOX_HEAD.CONV_DIM", layout.rcnn.box_conv_dim, "weights: roi_head.bbox_head.shared_convs")
        plan.set("MODEL.ROI_BOX_HEAD.NORM", d2_norm(f"{bkey}.norm_cfg", bbox.get("norm_cfg") if bbox else None,
                                                     layout.rcnn.box_norm, backbone=False, plan=plan),
                 f"{bkey}.norm_cfg")  # fmt: skip
    plan.set("MODEL.ROI_BOX_HEAD.NUM_FC", layout.rcnn.box_fcs, "weights: roi_head.bbox_head.shared_fcs")
    if layout.rcnn.box_fcs:
        plan.set("MODEL.ROI_BOX_HEAD.FC_DIM", layout.rcnn.box_fc_dim, "weights: roi_head.bbox_head.shared_fcs")
    plan.set("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", layout.rcnn.class_agnostic, "weights: roi_head.bbox_head.fc_reg")
    _coder_and_test(plan, cfg, model, bbox, bkey, "MODEL.ROI_BOX_HEAD", "MODEL.ROI_HEADS", "rcnn",
                    [0.1, 0.1, 0.2, 0.2], "box coder stds (0.1, 0.1, 0.2, 0.2)", "R-CNN")  # fmt: skip
    # Training settings, for fine-tuning.
    rcnn = cfg.get(model + "train_cfg.rcnn") or cfg.get("train_cfg.rcnn") or {}
    if sampler:
        skey = f"{model}train_cfg.rcnn.sampler"
        plan.set("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", int(sampler.get("num", 512)), f"{skey}.num")
        plan.set("MODEL.ROI_HEADS.POSITIVE_FRACTION", float(sampler.get("pos_fraction", 0.25)), f"{skey}.pos_fraction")
        plan.set("MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", bool(sampler.get("add_gt_as_proposals", True)),
                 f"{skey}.add_gt_as_proposals")  # fmt: skip
        if iou_balanced:
            neg = sampler["neg_sampler"]
            plan.set("MODEL.LIBRA.SAMPLER.POS", "instance_balanced"
                     if sampler.get("pos_sampler", {}).get("type") == "InstanceBalancedPosSampler" else "random",
                     f"{skey}.pos_sampler.type")  # fmt: skip
            plan.set("MODEL.LIBRA.SAMPLER.NEG", "iou_balanced", f"{skey}.neg_sampler.type")
            plan.set("MODEL.LIBRA.SAMPLER.NUM_BINS", int(neg.get("num_bins", 3)), f"{skey}.neg_sampler.num_bins")
            plan.set("MODEL.LIBRA.SAMPLER.BINNING", "mmdet", f"{skey}.neg_sampler.type (mmdetection's bins)")
            plan.set("MODEL.LIBRA.SAMPLER.FLOOR_THR", float(neg.get("floor_thr", -1)), f"{skey}.neg_sampler.floor_thr")
            plan.set("MODEL.LIBRA.SAMPLER.FLOOR_FRACTION", float(neg.get("floor_fraction", 0)),
                     f"{skey}.neg_sampler.floor_fraction")  # fmt: skip
        elif libra:
            plan.set("MODEL.LIBRA.SAMPLER.POS", "random", f"{skey}.type")
            plan.set("MODEL.LIBRA.SAMPLER.NEG", "random", f"{skey}.type")
    elif libra and not cfg:
        plan.assume("MODEL.LIBRA.SAMPLER.BINNING", "mmdet", "mmdetection's Libra R-CNN sampler, for fine-tuning")
        plan.assume("MODEL.LIBRA.BALANCED_L1.VARIANT", "mmdet", "mmdetection's balanced L1, for fine-tuning")
    assigner = rcnn.get("assigner") if rcnn else None
    if assigner and assigner.get("pos_iou_thr") is not None:
        pos, neg = float(assigner["pos_iou_thr"]), float(assigner.get("neg_iou_thr", assigner["pos_iou_thr"]))
        if pos == neg:
            plan.set("MODEL.ROI_HEADS.IOU_THRESHOLDS", [pos], f"{model}train_cfg.rcnn.assigner.pos_iou_thr")
        else:
            plan.not_carried.append(f"{model}train_cfg.rcnn.assigner: an ignore band {neg}-{pos} (training only)")
    _loss(plan, bbox.get("loss_bbox") if bbox else None, f"{bkey}.loss_bbox", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE",
          "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", balanced_l1="MODEL.LIBRA.BALANCED_L1")  # fmt: skip
    if libra and plan.value("MODEL.ROI_HEADS.NAME") == "LibraROIHeads" and not any(
        k == "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE" for k, _, _ in plan.settings
    ):
        plan.assume("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "balanced_l1", "Libra R-CNN's box loss, for fine-tuning")


def retina_head_settings(plan: ConfigPlan, cfg: MmdetConfig, layout: WeightLayout, model: str) -> None:
    key = model + "bbox_head"
    head = cfg.get(key) or {}
    if head and str(head.get("type")).replace("mmdet.", "") != "RetinaHead":
        raise ConversionError(f"{key}.type = {head.get('type')!r}: the converter mirrors RetinaHead")
    if head and head.get("feat_channels", layout.fpn.channels) != layout.fpn.channels:
        raise ConversionError(f"{key}.feat_channels = {head['feat_channels']}: Detectron2's RetinaNet head keeps the FPN's channels")
    loss = head.get("loss_bbox", {}) if head else {}
    libra = str(loss.get("type")) == "BalancedL1Loss" if head else layout.bfp
    plan.set("MODEL.META_ARCHITECTURE", "LibraRetinaNet" if libra else "RetinaNet",
             f"{key}.loss_bbox.type" if head else "weights: neck.1 (the BFP: a Libra RetinaNet)")  # fmt: skip
    plan.set("MODEL.RETINANET.IN_FEATURES", plan.levels, "weights: the FPN levels")
    plan.set("MODEL.RETINANET.NUM_CLASSES", layout.num_classes, "weights: bbox_head.retina_cls")
    plan.set("MODEL.RETINANET.NUM_CONVS", layout.retina.convs, "weights: bbox_head.cls_convs")
    norm = head.get("norm_cfg") if head else None
    if layout.retina.norm == "bn":
        raise ConversionError(
            f"{key}.norm_cfg = BN: mmdetection shares the head's batch norm over levels, Detectron2 keeps one per level"
        )
    plan.set("MODEL.RETINANET.NORM", d2_norm(f"{key}.norm_cfg", norm, layout.retina.norm, backbone=False, plan=plan),
             f"{key}.norm_cfg" if norm else "weights: bbox_head.cls_convs.0")  # fmt: skip
    _anchors(plan, head, key, layout.retina.anchors, retina=True)
    test, tkey = _coder_and_test(plan, cfg, model, head, key, "MODEL.RETINANET", "MODEL.RETINANET", "", [1.0] * 4,
                                 "RetinaNet coder", "RetinaNet")  # fmt: skip
    set_or_assume(plan, "MODEL.RETINANET.TOPK_CANDIDATES_TEST", test.get("nms_pre"), f"{tkey}.nms_pre", 1000,
                  "mmdetection's default RetinaNet test settings")  # fmt: skip
    focal = head.get("loss_cls", {}) if head else {}
    if focal:
        if str(focal.get("type")).replace("mmdet.", "") != "FocalLoss":
            plan.not_carried.append(f"{key}.loss_cls = {focal.get('type')} (training only)")
        else:
            plan.set("MODEL.RETINANET.FOCAL_LOSS_ALPHA", float(focal.get("alpha", 0.25)), f"{key}.loss_cls.alpha")
            plan.set("MODEL.RETINANET.FOCAL_LOSS_GAMMA", float(focal.get("gamma", 2.0)), f"{key}.loss_cls.gamma")
    _loss(plan, loss or None, f"{key}.loss_bbox", "MODEL.RETINANET.BBOX_REG_LOSS_TYPE",
          "MODEL.RETINANET.SMOOTH_L1_LOSS_BETA", balanced_l1="MODEL.LIBRA.RETINANET.BALANCED_L1")  # fmt: skip
    if libra and not head:
        plan.assume("MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "balanced_l1", "Libra RetinaNet's box loss, for fine-tuning")
        plan.assume("MODEL.LIBRA.RETINANET.BALANCED_L1.BETA", 0.11, "Libra RetinaNet's balanced L1 beta, for fine-tuning")
        plan.assume("MODEL.LIBRA.RETINANET.BALANCED_L1.VARIANT", "mmdet", "mmdetection's balanced L1, for fine-tuning")
    assigner = cfg.get(model + "train_cfg.assigner") or cfg.get("train_cfg.assigner")
    if assigner and assigner.get("pos_iou_thr") is not None:
        neg, pos = float(assigner.get("neg_iou_thr", 0.4)), float(assigner["pos_iou_thr"])
        plan.set("MODEL.RETINANET.IOU_THRESHOLDS", [neg, pos], f"{model}train_cfg.assigner")
        plan.set("MODEL.RETINANET.IOU_LABELS", [0, -1, 1], f"{model}train_cfg.assigner")


def class_settings(plan: ConfigPlan, cfg: MmdetConfig, layout: WeightLayout, meta: dict) -> None:
    names, source = None, None
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    for value, where in ((dataset_meta.get("classes"), 'meta["dataset_meta"]["classes"]'),
                         (meta.get("CLASSES"), 'meta["CLASSES"]'),
                         (cfg.get("train_dataloader.dataset.metainfo.classes"), "train_dataloader.dataset.metainfo"),
                         (cfg.get("classes"), "classes"),
                         (cfg.get("data.train.classes"), "data.train.classes")):  # fmt: skip
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            names, source = [str(v) for v in value], where
            break
    if names is None:
        plan.assumptions.append("class names: none in the checkpoint (MODEL.LIBRA.CLASS_NAMES left empty)")
        return
    if len(names) != layout.num_classes:
        raise ConversionError(f"{source} names {len(names)} classes but the weights predict {layout.num_classes}")
    plan.set("MODEL.LIBRA.CLASS_NAMES", names, source)
