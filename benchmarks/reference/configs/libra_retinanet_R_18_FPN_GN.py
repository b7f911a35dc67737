# Mirror of configs/FashionScenes/libra_retinanet_R_18_FPN_GN.yaml: the RetinaNet mirror plus
# mmdetection's own Libra RetinaNet settings (configs/libra_rcnn/libra-retinanet_r50_fpn_1x_coco.py):
# the BFP on P3-P7 (non-local, refine level 1 = P4) and balanced L1 (alpha 0.5, gamma 1.5, beta 0.11).
_base_ = './retinanet_R_18_FPN_GN.py'
model = dict(
    neck=[
        {{_base_.model.neck}},
        dict(type='BFP', in_channels=64, num_levels=5, refine_level=1, refine_type='non_local')
    ],
    bbox_head=dict(
        loss_bbox=dict(_delete_=True, type='BalancedL1Loss', alpha=0.5, gamma=1.5, beta=0.11, loss_weight=1.0)))
