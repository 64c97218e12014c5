# Stock mmdet RetinaNet-R18 (ResNet-18, FPN 256, head 256 x 4 stacked convs) on the
# built-in shapes data with the demo's schedule and data settings, seeded: the
# reference for configs/retinanet_repvgg-a0_reppafpn-slim_shapes.py. Random init
# (no ImageNet weights are downloaded) and so, as the mmrep configs on this data,
# no frozen stage and BN trained.
_base_ = './retinanet_repghost_shapes_demo.py'

randomness = dict(seed=0)

model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNet',
        depth=18,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch'),
    neck=dict(
        _delete_=True,
        type='FPN',
        in_channels=[64, 128, 256, 512],
        out_channels=256,
        start_level=1,
        add_extra_convs='on_input',
        num_outs=5),
    bbox_head=dict(in_channels=256, feat_channels=256, stacked_convs=4))

custom_hooks = []  # nothing to fuse
