# RetinaNet with a RepVGG-A0 backbone, COCO 1x schedule.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', './_base_/models/repvgg-a0.py']

custom_imports = dict(imports=['mmrep'], allow_failed_imports=False)

model = dict(
    backbone=dict(_base_.repvgg_a0_backbone, _delete_=True),
    neck=dict(in_channels=_base_.repvgg_a0_channels))

custom_hooks = [dict(type='RepDeployHook')]
