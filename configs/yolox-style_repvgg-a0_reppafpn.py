# YOLOX-s recipe (Mosaic/MixUp, SimOTA, EMA, 300 epochs) with a YOLO-style
# re-parameterizable body: RepVGG-A0 backbone + RepPAFPN neck instead of
# CSPDarknet + YOLOXPAFPN. Backbone and neck fuse to plain convs; the decoupled
# YOLOXHead keeps its own ConvModules.
_base_ = 'mmdet::yolox/yolox_s_8xb8-300e_coco.py'

custom_imports = dict(imports=['mmrep'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='RepVGG',
        arch='A0',
        out_indices=(1, 2, 3),  # strides 8, 16, 32 as the head's strides
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=None),
    neck=dict(
        _delete_=True,
        type='RepPAFPN',
        in_channels=[96, 192, 1280],
        out_channels=128,  # = bbox_head.in_channels
        num_outs=3,
        num_csp_blocks=1,
        norm_cfg=dict(type='BN', momentum=0.03, eps=0.001),
        act_cfg=dict(type='SiLU')))

# the YOLOX hooks of the base config, plus fusion for testing; with the EMAHook
# RepDeployHook fuses the EMA weights
custom_hooks = [
    dict(type='YOLOXModeSwitchHook', num_last_epochs=15, priority=48),
    dict(type='SyncNormHook', priority=48),
    dict(
        type='EMAHook',
        ema_type='ExpMomentumEMA',
        momentum=0.0001,
        update_buffers=True,
        priority=49),
    dict(type='RepDeployHook'),
]
