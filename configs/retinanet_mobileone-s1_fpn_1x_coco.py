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
        # ImageNet weights: timm's copy of the official MobileOne-S1 (top-1 75.76 by timm, 75.9
        # official: the same weights; mmpretrain's retraining 75.72), downloaded from the
        # Hugging Face hub and converted on the fly (docs/en/model_zoo.md, "Weight sources").
        # Offline: --cfg-options model.backbone.init_cfg=None trains from scratch.
        init_cfg=dict(type='Pretrained', checkpoint='timm://mobileone_s1.apple_in1k')),
    neck=dict(in_channels=[96, 192, 512, 1280]))

custom_hooks = [dict(type='RepDeployHook')]
