# Shared settings of the reference (mmdetection 3.3) runs on FashionScenes: the data, schedule and
# runtime of configs/FashionScenes/Base-FashionScenes.yaml, in mmengine's words. Every value that
# mirrors one of our keys names it; docs/reports/reference_training.md lists what cannot be mirrored.
# No `import` statements: mmengine would parse the file as a "lazy import" config.
data_root = '{{$FASHION_SCENES:datasets/fashion_scenes}}/'
classes = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker',
           'Bag', 'Ankle boot')  # libra_rcnn.FASHION_MNIST_CLASSES, category ids 1-10
max_iters = 800  # SOLVER.MAX_ITER
default_scope = 'mmdet'

# INPUT.FORMAT BGR, MODEL.PIXEL_MEAN / PIXEL_STD in BGR order; SIZE_DIVISIBILITY of the FPN (32).
data_preprocessor = dict(
    type='DetDataPreprocessor',
    mean=[103.53, 116.28, 123.675],
    std=[57.375, 57.12, 58.395],
    bgr_to_rgb=False,
    pad_size_divisor=32)
# ResNet-18 from scratch with GroupNorm (MODEL.RESNETS.NORM GN: 32 groups), nothing frozen
# (MODEL.BACKBONE.FREEZE_AT 0), Detectron2's init: Kaiming-normal fan-out convs, norms at 1/0, no
# zero-initialised last norm in the residual branch (mmdetection's default zero_init_residual=True).
backbone = dict(
    type='ResNet',
    depth=18,
    num_stages=4,
    out_indices=(0, 1, 2, 3),
    frozen_stages=-1,
    norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
    norm_eval=False,
    zero_init_residual=False,
    style='pytorch',
    init_cfg=[dict(type='Kaiming', layer='Conv2d'),
              dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])])
# Detectron2's c2_xavier_fill (kaiming_uniform_ with a=1, fan-in; bias 0) for the FPN and fc layers.
c2_xavier_fill = dict(type='Kaiming', a=1, mode='fan_in', nonlinearity='leaky_relu', distribution='uniform')
# MODEL.FPN.OUT_CHANNELS 64, MODEL.FPN.NORM GN.
fpn_norm = dict(type='GN', num_groups=32, requires_grad=True)

# INPUT.MIN_SIZE_TRAIN (256,), MAX_SIZE_TRAIN 256 (the scenes are 256x256: no resize); Detectron2's
# default horizontal flip (INPUT.RANDOM_FLIP).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(256, 256), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 256), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
# SOLVER.IMS_PER_BATCH 4, DATALOADER.NUM_WORKERS 1, Detectron2's infinite shuffled sampler.
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type='CocoDataset',
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=0),
        pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CocoDataset',
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline))
test_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val.json', metric='bbox')
val_dataloader = None
val_evaluator = None
val_cfg = None
test_cfg = dict(type='TestLoop')
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters + 1)

# SOLVER.BASE_LR 0.02, MOMENTUM 0.9, WEIGHT_DECAY 1e-4, WEIGHT_DECAY_NORM 0 (Detectron2's default).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001),
    paramwise_cfg=dict(norm_decay_mult=0.0))
# WarmupCosineLR with WARMUP_ITERS 100, WARMUP_FACTOR 0.001. mmengine multiplies the two factors,
# Detectron2 interpolates linearly to the cosine's value at the end of warm-up (docs: < 6 % apart).
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=0.0, by_epoch=False, begin=0, end=max_iters)
]
# SOLVER.CHECKPOINT_PERIOD 250; the runs resume from the newest checkpoint.
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=250, by_epoch=False, max_keep_ckpts=1, save_last=True),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='gloo'))
log_processor = dict(type='LogProcessor', window_size=20, by_epoch=False)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_level = 'INFO'
load_from = None
resume = False
