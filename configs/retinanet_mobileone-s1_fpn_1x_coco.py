# RetinaNet with a MobileOne-S1 backbone and FPN, COCO 1x schedule (mmdet's RetinaNet
# recipe: no official MobileOne detection recipe exists). Fused before testing and
# exported after training by RepDeployHook.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmrep'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='MobileOne',
        arch='s1',
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        # No weights are downloaded. For ImageNet initialization convert the official
        # mobileone_s1_unfused.pth.tar (or timm's mobileone_s1.apple_in1k, mmpretrain's
        # mobileone-s1_8xb32_in1k) with tools/convert_weights.py --arch mobileone-s1 (see
        # docs/en/user_guides/pretrained_weights.md), then set
        # init_cfg=dict(type='Pretrained', checkpoint='<converted>.pth').
    ),
    neck=dict(in_channels=[96, 192, 512, 1280]))

custom_hooks = [dict(type='RepDeployHook')]
