# Mirror of configs/FashionScenes/retinanet_R_18_FPN_GN.yaml: RetinaNet on P3-P7 of ResNet-18 +
# 64-channel FPN, GroupNorm in the backbone, FPN and head, focal loss, L1 box loss.
_base_ = './_base_fashion_scenes.py'
model = dict(
    type='RetinaNet',
    data_preprocessor={{_base_.data_preprocessor}},
    backbone=dict(_base_.backbone, out_indices=(1, 2, 3)),
    # P6 from C5 (add_extra_convs='on_input'), as Detectron2's build_retinanet_resnet_fpn_backbone.
    # Not mirrored (docs/reports/reference_training.md): Detectron2 applies a ReLU before P7 and no norm to
    # P6/P7; mmdetection's RetinaNet applies no ReLU and the FPN's GroupNorm to both.
    neck=dict(
        type='FPN',
        in_channels=[128, 256, 512],
        out_channels=64,
        start_level=0,
        add_extra_convs='on_input',
        num_outs=5,
        norm_cfg={{_base_.fpn_norm}},
        init_cfg=dict(layer='Conv2d', **_base_.c2_xavier_fill)),
    bbox_head=dict(
        type='RetinaHead',
        num_classes=10,
        in_channels=64,
        stacked_convs=4,
        feat_channels=64,
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),  # MODEL.RETINANET.NORM GN
        # MODEL.ANCHOR_GENERATOR.SIZES [[16, 20.16, 25.4], ...]: 3 octave scales from 2 x stride.
        anchor_generator=dict(type='AnchorGenerator', octave_base_scale=2, scales_per_octave=3,
                              ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=[1.0] * 4),
        # MODEL.RETINANET.FOCAL_LOSS_GAMMA 2, FOCAL_LOSS_ALPHA 0.25.
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),  # smooth L1 with beta 0
    train_cfg=dict(
        # MODEL.RETINANET.IOU_THRESHOLDS [0.4, 0.5], low-quality matches kept.
        assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0, ignore_iof_thr=-1),
        sampler=dict(type='PseudoSampler'),
        allowed_border=-1,
        pos_weight=-1,
        debug=False),
    # MODEL.RETINANET.TOPK_CANDIDATES_TEST 1000, SCORE_THRESH_TEST 0.05, NMS_THRESH_TEST 0.5;
    # TEST.DETECTIONS_PER_IMAGE 100.
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5),
                  max_per_img=100))
