# Mask R-CNN with RepVGG-A0 and the re-parameterizable PAFPN neck, COCO 1x schedule.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', './_base_/models/repvgg-a0.py']

custom_imports = dict(imports=['mmrep'], allow_failed_imports=False)

model = dict(
    backbone=dict(_base_.repvgg_a0_backbone, _delete_=True),
    # P2-P5 from the four stages, P6 by max-pool as in the FPN it replaces
    neck=dict(
        _delete_=True,
        type='RepPAFPN',
        in_channels=_base_.repvgg_a0_channels,
        out_channels=256,
        start_level=0,
        num_outs=5))

custom_hooks = [dict(type='RepDeployHook')]
