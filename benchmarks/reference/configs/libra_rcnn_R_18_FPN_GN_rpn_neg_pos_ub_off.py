# The Libra R-CNN mirror without the one setting of mmdetection's Libra config that ours lacks:
# the RPN's sampler takes negatives without the bound of 5 per positive (neg_pos_ub=-1, as the
# Faster R-CNN mirror and Detectron2's RPN). One difference at a time (docs/reports/reference_training.md).
_base_ = './libra_rcnn_R_18_FPN_GN.py'
model = dict(train_cfg=dict(rpn=dict(sampler=dict(neg_pos_ub=-1))))
