# Mirror of configs/FashionScenes/faster_rcnn_R_18_FPN_GN.yaml (= ablation/table2_l1_a_baseline):
# Faster R-CNN, ResNet-18 + 64-channel FPN with GroupNorm, L1 box losses in the RPN and RoI head.
_base_ = './_base_fashion_scenes.py'
model = dict(
    type='FasterRCNN',
    data_preprocessor={{_base_.data_preprocessor}},
    backbone={{_base_.backbone}},
    neck=dict(
        type='FPN',
        in_channels=[64, 128, 256, 512],
        out_channels=64,
        num_outs=5,
        norm_cfg={{_base_.fpn_norm}},
        init_cfg=dict(layer='Conv2d', **_base_.c2_xavier_fill)),
    rpn_head=dict(
        type='RPNHead',
        in_channels=64,
        feat_channels=64,
        # MODEL.ANCHOR_GENERATOR.SIZES [[16], [32], [64], [128], [256]], ASPECT_RATIOS 0.5/1/2, OFFSET 0.
        anchor_generator=dict(type='AnchorGenerator', scales=[4], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=[1.0] * 4),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),  # MODEL.RPN.SMOOTH_L1_BETA 0: L1
    roi_head=dict(
        type='StandardRoIHead',
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor',
            # ROIAlignV2 (aligned), POOLER_RESOLUTION 7, POOLER_SAMPLING_RATIO 1; torchvision's kernel
            # (mmcv-lite has no compiled ops), the one Detectron2 calls.
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=1, aligned=True, use_torchvision=True),
            out_channels=64,
            featmap_strides=[4, 8, 16, 32]),
        bbox_head=dict(
            type='Shared2FCBBoxHead',
            in_channels=64,
            fc_out_channels=256,  # MODEL.ROI_BOX_HEAD.FC_DIM
            roi_feat_size=7,
            num_classes=10,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_class_agnostic=False,
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0),  # ROI_BOX_HEAD.SMOOTH_L1_BETA 0: L1
            # Detectron2's FastRCNNOutputLayers / FastRCNNConvFCHead init.
            init_cfg=[dict(type='Normal', std=0.01, override=dict(name='fc_cls')),
                      dict(type='Normal', std=0.001, override=dict(name='fc_reg')),
                      dict(override=dict(name='shared_fcs'), **_base_.c2_xavier_fill)])),
    train_cfg=dict(
        rpn=dict(
            # MODEL.RPN.IOU_THRESHOLDS [0.3, 0.7]; Detectron2 keeps every GT box's best anchors
            # whatever their IoU: min_pos_iou 0 (mmdetection's default 0.3).
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.0,
                          match_low_quality=True, ignore_iof_thr=-1),
            sampler=dict(type='RandomSampler', num=256, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False),
            allowed_border=-1,
            pos_weight=-1,
            debug=False),
        # MODEL.RPN.PRE_NMS_TOPK_TRAIN 1000 (per level), POST_NMS_TOPK_TRAIN 500, NMS_THRESH 0.7.
        rpn_proposal=dict(nms_pre=1000, max_per_img=500, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                          match_low_quality=False, ignore_iof_thr=-1),
            # MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 256, POSITIVE_FRACTION 0.25, PROPOSAL_APPEND_GT.
            sampler=dict(type='RandomSampler', num=256, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
            pos_weight=-1,
            debug=False)),
    test_cfg=dict(
        # MODEL.RPN.PRE_NMS_TOPK_TEST 500, POST_NMS_TOPK_TEST 500.
        rpn=dict(nms_pre=500, max_per_img=500, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        # MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.05, NMS_THRESH_TEST 0.5, TEST.DETECTIONS_PER_IMAGE 100.
        rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)))
