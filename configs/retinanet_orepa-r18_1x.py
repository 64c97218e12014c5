# RetinaNet with an OREPA-ResNet-18 backbone, COCO 1x schedule.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmrep'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='OREPAResNet',
        depth=18,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        # No weights are downloaded. For ImageNet initialization convert the official
        # checkpoint with tools/convert_weights.py (see docs/en/user_guides/pretrained_weights.md),
        # then set init_cfg=dict(type='Pretrained', checkpoint='<converted>.pth').
    ),
    # as mmdet's retinanet_r18_fpn_1x_coco.py: the C3-C5 levels of a basic-block ResNet
    neck=dict(in_channels=[64, 128, 256, 512]))

custom_hooks = [dict(type='RepDeployHook')]
