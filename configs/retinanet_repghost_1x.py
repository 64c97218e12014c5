# RetinaNet with a RepGhostNet-1.0x backbone, COCO 1x schedule.
# Fused before testing and exported after training by RepDeployHook.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmrep'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='RepGhostNet',
        widen_factor=1.0,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        # No weights are downloaded. For ImageNet initialization convert the official
        # checkpoint with tools/convert_weights.py (see docs/en/user_guides/pretrained_weights.md),
        # then set init_cfg=dict(type='Pretrained', checkpoint='<converted>.pth').
    ),
    neck=dict(in_channels=[24, 40, 112, 160]))

custom_hooks = [dict(type='RepDeployHook')]
