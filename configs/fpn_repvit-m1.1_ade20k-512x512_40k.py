# Semantic FPN with RepViT-M1.1 on ADE20K 512x512, 40k iterations: the official RepViT
# segmentation recipe (THU-MIG/RepViT segmentation/configs/sem_fpn/
# fpn_repvit_m1_1_ade20k_40k.py, mmseg 0.30) in mmseg 1: AdamW lr 2e-4, weight decay 1e-4,
# poly decay (power 0.9) to 1e-6, batch 32 (8 GPUs x 4 images). The official segmentation
# backbone taps the first three stages one block later than the detection one
# (out_indices [3, 7, 21, 24]): taps_after_pre_block=True. Published: 40.6 mIoU. The
# official ADE20K checkpoint (repvit_m1_1_ade20k.pth) loads after
# tools/convert_whole_model.py. (The official test pipeline resizes images to multiples of
# 32 with its AlignResize; this one uses mmseg's stock Resize, which mmseg's FPN handles.)
_base_ = ['mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py', './_base_/models/repvit-m1.1.py']

custom_imports = dict(imports=['mmrep'], allow_failed_imports=False)

max_iters = 40000
interval = 4000

model = dict(
    pretrained=None,
    backbone=dict(_base_.repvit_m1_1_backbone, _delete_=True, taps_after_pre_block=True),
    neck=dict(in_channels=_base_.repvit_m1_1_channels))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4))

param_scheduler = [
    dict(type='PolyLR', eta_min=1e-6, power=0.9, begin=0, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=interval)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=interval))

custom_hooks = [dict(type='RepDeployHook')]
