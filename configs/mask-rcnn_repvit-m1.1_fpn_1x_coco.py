# Mask R-CNN with RepViT-M1.1 and FPN, COCO 1x: the official RepViT detection recipe
# (THU-MIG/RepViT detection/configs/mask_rcnn_repvit_m1_1_fpn_1x_coco.py, mmdet 2.28) in
# mmdet 3: AdamW lr 2e-4, weight decay 0.05, no gradient clipping, 12 epochs with steps at
# 8 and 11, linear warm-up over 500 iterations from 1e-6 of the lr, batch 16 (8 GPUs x 2).
# The backbone taps the stage ends (strides 4/8/16/32), the official out_indices
# [2, 6, 20, 24]. Published: 39.8 box AP / 37.2 mask AP. The official COCO checkpoint
# (repvit_m1_1_coco.pth) loads after tools/convert_whole_model.py.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', './_base_/models/repvit-m1.1.py']

custom_imports = dict(imports=['mmrep'], allow_failed_imports=False)

model = dict(
    backbone=dict(_base_.repvit_m1_1_backbone, _delete_=True),
    neck=dict(in_channels=_base_.repvit_m1_1_channels))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]

custom_hooks = [dict(type='RepDeployHook')]
