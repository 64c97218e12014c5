# The speed-built RetinaNet of configs/retinanet_repvgg-a0_reppafpn-slim_shapes.py (same
# 64-channel RepPAFPN of RepConvN 3x3 convs, same 64-channel head with two stacked convs,
# same shapes data, schedule and seed) around MobileOne-S0 instead of RepVGG-A0. MobileOne-S0
# fuses to depthwise 3x3 + pointwise 1x1 convs: a 1.05M-parameter backbone (4.27M while
# training; fused RepVGG-A0: 7.03M). Compare with the RepVGG-A0 slim config and
# configs/retinanet_r18_shapes_baseline.py (stock mmdet RetinaNet-R18, same schedule).
_base_ = './retinanet_repvgg-a0_reppafpn-slim_shapes.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='MobileOne',
        arch='s0',
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False),
    neck=dict(in_channels=[48, 128, 256, 1024]))
