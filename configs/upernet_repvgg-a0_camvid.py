# UPerNet with RepVGG-A0 on CamVid (11 classes, 480x360; label 11 = void),
# 20k iterations, SGD + poly. Plain BN everywhere so it also trains on one GPU/CPU.
# CamVid labels are the class ids 0-10 already; the void label 11 is ignored
# by the losses, the padding and the metric (ignore_index=11).
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_20k.py',
    './_base_/models/repvgg-a0.py',
]

custom_imports = dict(imports=['mmrep'], allow_failed_imports=False)

void_label = 11
crop_size = (352, 352)
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size, seg_pad_val=void_label),
    backbone=dict(_base_.repvgg_a0_backbone, _delete_=True, norm_cfg=norm_cfg),
    decode_head=dict(
        in_channels=_base_.repvgg_a0_channels,
        channels=256,
        num_classes=11,
        ignore_index=void_label,
        norm_cfg=norm_cfg),
    auxiliary_head=dict(
        in_channels=_base_.repvgg_a0_channels[2],
        channels=128,
        num_classes=11,
        ignore_index=void_label,
        norm_cfg=norm_cfg))

# the data in mmseg's layout (configs/_base_/datasets/*.py there): each loader names its
# data set in full, so a child config re-points them all with one override per loader
dataset_type = 'BaseSegDataset'
data_root = '../shared/data/camvid'
metainfo = dict(
    classes=('Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol',
             'Fence', 'Car', 'Pedestrian', 'Bicyclist'),
    palette=[[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128],
             [60, 40, 222], [128, 128, 0], [192, 128, 128], [64, 64, 128],
             [64, 0, 128], [64, 64, 0], [0, 128, 192]])

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(480, 360), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75,
         ignore_index=void_label),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(480, 360), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]

train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        img_suffix='.png',
        seg_map_suffix='.png',
        ignore_index=void_label,
        data_prefix=dict(img_path='train', seg_map_path='trainannot'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        img_suffix='.png',
        seg_map_suffix='.png',
        ignore_index=void_label,
        data_prefix=dict(img_path='val', seg_map_path='valannot'),
        pipeline=test_pipeline))
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        img_suffix='.png',
        seg_map_suffix='.png',
        ignore_index=void_label,
        data_prefix=dict(img_path='test', seg_map_path='testannot'),
        pipeline=test_pipeline))
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'], ignore_index=void_label)
test_evaluator = val_evaluator

custom_hooks = [dict(type='RepDeployHook')]
