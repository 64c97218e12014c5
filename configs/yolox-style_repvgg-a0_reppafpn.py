# YOLOX-s recipe (Mosaic/MixUp, SimOTA, EMA, 300 epochs) with a YOLO-style
# re-parameterizable body: RepVGG-A0 backbone + RepPAFPN neck instead of
# CSPDarknet + YOLOXPAFPN. Backbone and neck fuse to plain convs; the decoupled
# YOLOXHead keeps its own ConvModules.
_base_ = ['mmdet::yolox/yolox_s_8xb8-300e_coco.py', './_base_/models/repvgg-a0.py']

custom_imports = dict(imports=['mmrep'], allow_failed_imports=False)

model = dict(
    # strides 8, 16, 32 as the head's strides
    backbone=dict(_base_.repvgg_a0_backbone, _delete_=True, out_indices=(1, 2, 3)),
    neck=dict(
        _delete_=True,
        type='RepPAFPN',
        in_channels=_base_.repvgg_a0_channels[1:],
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
