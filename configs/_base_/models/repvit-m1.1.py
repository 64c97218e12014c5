# The RepViT-M1.1 backbone of the RepViT detection and segmentation configs, as the official
# THU-MIG/RepViT detection/ and segmentation/ code builds it: SyncBN, every BN kept in eval
# mode while training (the official backbone's train() does that: norm_eval=True), no frozen
# stage. A config inherits a whole model from mmdet / mmseg, so this file gives variables:
#   _base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', './_base_/models/repvit-m1.1.py']
#   model = dict(backbone=dict(_base_.repvit_m1_1_backbone, _delete_=True),
#                neck=dict(in_channels=_base_.repvit_m1_1_channels))
repvit_m1_1_backbone = dict(
    type='RepViT',
    arch='m1.1',
    out_indices=(0, 1, 2, 3),
    frozen_stages=-1,
    norm_cfg=dict(type='SyncBN', requires_grad=True),
    norm_eval=True,
    # ImageNet weights: the official recipe's repvit_m1_1_distill_300e.pth (the published COCO
    # and ADE20K results start from it), as timm's copy on the Hugging Face hub (top-1 80.83 by
    # timm, 80.7 official; the 450-epoch file reaches 81.31 but no downstream result used it),
    # converted on the fly (docs/en/model_zoo.md, "Weight sources").
    # Offline: --cfg-options model.backbone.init_cfg=None trains from scratch.
    init_cfg=dict(type='Pretrained', checkpoint='timm://repvit_m1_1.dist_300e_in1k'))
# channels of the four stage outputs (strides 4/8/16/32)
repvit_m1_1_channels = [64, 128, 256, 512]
