# RetinaNet-RepVGG-A0 on the built-in shapes data (tools/demo.py makes it): the
# shapes demo recipe with only the backbone changed. Seeded, so that it and
# retinanet_qarepvgg-a0_shapes_demo.py (the same with quant_friendly=True) are
# trained the same way and their INT8 accuracy can be compared.
_base_ = './retinanet_repghost_shapes_demo.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='RepVGG',
        arch='A0',
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='BN', requires_grad=True),
        init_cfg=None),
    neck=dict(in_channels=[48, 96, 192, 1280]))

randomness = dict(seed=0, deterministic=True)
