# A RetinaNet built for CPU speed, trained on the built-in shapes data with the demo's
# schedule (configs/retinanet_repghost_shapes_demo.py, seeded here). Every piece is sized
# for latency: RepVGG-A0 (dense 3x3 convs, fused to a plain VGG by RepDeployHook), a
# 64-channel RepPAFPN whose 3x3 convs are RepConvN (fused to plain convs) and a 64-channel
# head with two stacked convs instead of 256 x 4. Compare with
# configs/retinanet_r18_shapes_baseline.py (stock mmdet RetinaNet-R18, same schedule).
_base_ = './retinanet_repghost_shapes_demo.py'

randomness = dict(seed=0)

model = dict(
    backbone=dict(
        _delete_=True,
        type='RepVGG',
        arch='A0',
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False),
    neck=dict(
        _delete_=True,
        type='RepPAFPN',
        in_channels=[48, 96, 192, 1280],
        out_channels=64,
        start_level=1,
        add_extra_convs='on_input',
        num_outs=5,
        num_csp_blocks=1),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=2))
