# Mirror of configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml (the demo, = ablation/table2_l1_d):
# the Faster R-CNN mirror plus mmdetection's own Libra R-CNN settings
# (configs/libra_rcnn/libra-faster-rcnn_r50_fpn_1x_coco.py): the BFP (non-local, refine level 2 = P4
# of P2-P6), IoU-balanced sampling (3 bins), balanced L1 (alpha 0.5, gamma 1.5, beta 1) in the RoI
# head, and, as the authors set it, at most 5 negatives per positive in the RPN's sampler.
_base_ = './faster_rcnn_R_18_FPN_GN.py'
model = dict(
    neck=[
        {{_base_.model.neck}},
        dict(type='BFP', in_channels=64, num_levels=5, refine_level=2, refine_type='non_local')
    ],
    roi_head=dict(
        bbox_head=dict(
            loss_bbox=dict(_delete_=True, type='BalancedL1Loss', alpha=0.5, gamma=1.5, beta=1.0, loss_weight=1.0))),
    train_cfg=dict(
        rpn=dict(sampler=dict(neg_pos_ub=5)),
        rcnn=dict(
            sampler=dict(
                _delete_=True,
                type='CombinedSampler',
                num=256,
                pos_fraction=0.25,
                add_gt_as_proposals=True,
                pos_sampler=dict(type='InstanceBalancedPosSampler'),
                neg_sampler=dict(type='IoUBalancedNegSampler', floor_thr=-1, floor_fraction=0, num_bins=3)))))
