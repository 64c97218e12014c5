# The RepVGG-A0 backbone shared by the RepVGG-A0 configs (mmdet's configs/_base_/models habit).
# A detector config inherits a whole model from mmdet, so this file gives variables, not `model`:
#   _base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', './_base_/models/repvgg-a0.py']
#   model = dict(backbone=dict(_base_.repvgg_a0_backbone, _delete_=True),
#                neck=dict(in_channels=_base_.repvgg_a0_channels))
repvgg_a0_backbone = dict(
    type='RepVGG',
    arch='A0',
    out_indices=(0, 1, 2, 3),
    frozen_stages=-1,
    norm_cfg=dict(type='BN', requires_grad=True),
    norm_eval=False,
    # ImageNet weights: timm's copy of the official RepVGG-A0, the highest published top-1
    # of the arch (72.43 by timm; official 72.41; mmpretrain's retraining 72.37), downloaded
    # from the Hugging Face hub and converted on the fly (docs/en/model_zoo.md).
    # Offline: --cfg-options model.backbone.init_cfg=None trains from scratch.
    init_cfg=dict(type='Pretrained', checkpoint='timm://repvgg_a0.rvgg_in1k'))
# channels of the four stage outputs (strides 4/8/16/32)
repvgg_a0_channels = [48, 96, 192, 1280]
