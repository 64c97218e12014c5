# Mask R-CNN with RepVGG-A0 and the re-parameterizable PAFPN neck, COCO 1x schedule.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

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
    # P2-P5 from the four stages, P6 by max-pool as in the FPN it replaces
    neck=dict(
        _delete_=True,
        type='RepPAFPN',
        in_channels=[48, 96, 192, 1280],
        out_channels=256,
        start_level=0,
        num_outs=5))

custom_hooks = [dict(type='RepDeployHook')]
