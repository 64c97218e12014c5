# A RetinaNet built for CPU speed around MobileOne-S0, trained on the built-in shapes data
# with the demo's schedule, like configs/retinanet_repvgg-a0_reppafpn-slim_shapes.py: the
# same 64-channel RepPAFPN (RepConvN 3x3 convs) and 64-channel head with two stacked convs.
# MobileOne-S0 fuses to depthwise 3x3 + pointwise 1x1 convs: a 1.05M-parameter backbone
# (4.27M while training; fused RepVGG-A0: 7.03M). Compare with the RepVGG-A0 slim config and
# configs/retinanet_r18_shapes_baseline.py (stock mmdet RetinaNet-R18, same schedule).
_base_ = './retinanet_repghost_shapes_demo.py'

randomness = dict(seed=0)

model = dict(
    backbone=dict(
        _delete_=True,
        type='MobileOne',
        arch='s0',
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=None),
    neck=dict(
        _delete_=True,
        type='RepPAFPN',
        in_channels=[48, 128, 256, 1024],
        out_channels=64,
        start_level=1,
        add_extra_convs='on_input',
        num_outs=5,
        num_csp_blocks=1),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=2))
