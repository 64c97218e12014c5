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
        # ImageNet weights: timm's copy of the official RepGhostNet-1.0x (top-1 74.21 by timm,
        # 74.22 by the official repo: the same weights; mmpretrain has none), downloaded from
        # the Hugging Face hub and converted on the fly (docs/en/model_zoo.md, "Weight sources").
        # Offline: --cfg-options model.backbone.init_cfg=None trains from scratch.
        init_cfg=dict(type='Pretrained', checkpoint='timm://repghostnet_100.in1k')),
    neck=dict(in_channels=[24, 40, 112, 160]))

custom_hooks = [dict(type='RepDeployHook')]
