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
        # ImageNet weights: the official OREPA-ResNet-18 (top-1 72.13; timm and mmpretrain have
        # none). Google Drive serves it only behind a confirmation page: the first run stops
        # and says where to place the file (docs/en/user_guides/pretrained_weights.md).
        init_cfg=dict(type='Pretrained', checkpoint='https://drive.google.com/file/d/'
                      '1Z0cfmxLLWD2xjgUXpE2Y_4vxS4ij16Sx/view')),
    # as mmdet's retinanet_r18_fpn_1x_coco.py: the C3-C5 levels of a basic-block ResNet
    neck=dict(in_channels=[64, 128, 256, 512]))

custom_hooks = [dict(type='RepDeployHook')]
