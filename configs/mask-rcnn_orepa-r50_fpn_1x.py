# Mask R-CNN with an OREPA-ResNet-50 backbone, COCO 1x schedule.
# OREPA trains the online re-parameterized multi-branch blocks; RepDeployHook
# fuses them into a plain ResNet-50 before testing and exports it after training.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmrep'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='OREPAResNet',
        depth=50,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        # No weights are downloaded. For ImageNet initialization convert the official
        # checkpoint with tools/convert_weights.py (see docs/en/user_guides/pretrained_weights.md),
        # then set init_cfg=dict(type='Pretrained', checkpoint='<converted>.pth').
    ),
    neck=dict(in_channels=[256, 512, 1024, 2048]))

custom_hooks = [dict(type='RepDeployHook')]
