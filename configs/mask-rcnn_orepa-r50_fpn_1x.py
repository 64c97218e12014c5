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
        # ImageNet weights: the official OREPA-ResNet-50 (top-1 77.31; timm and mmpretrain have
        # none). Google Drive serves it only behind a confirmation page: the first run stops
        # and says where to place the file (docs/en/user_guides/pretrained_weights.md).
        init_cfg=dict(type='Pretrained', checkpoint='https://drive.google.com/file/d/'
                      '1Jn92wGHlFzkPjQxAmYdRU_EbSRQjsw0v/view')),
    neck=dict(in_channels=[256, 512, 1024, 2048]))

custom_hooks = [dict(type='RepDeployHook')]
