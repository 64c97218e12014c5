# RetinaNet with a RepVGG-A0 backbone, COCO 1x schedule.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmrep'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='RepVGG',
        arch='A0',
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[48, 96, 192, 1280]))

custom_hooks = [dict(type='RepDeployHook')]
