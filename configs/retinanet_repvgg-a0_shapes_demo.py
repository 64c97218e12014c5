# RetinaNet-RepVGG-A0 on the built-in shapes data (tools/demo.py makes it): the
# shapes demo recipe with only the backbone changed. Seeded, so that it and
# retinanet_qarepvgg-a0_shapes_demo.py (the same with quant_friendly=True) are
# trained the same way and their INT8 accuracy can be compared.
_base_ = './retinanet_repghost_shapes_demo.py'

# (RepVGG's defaults: the four stages out, BN, no freezing, random init)
model = dict(
    backbone=dict(_delete_=True, type='RepVGG', arch='A0'),
    neck=dict(in_channels=[48, 96, 192, 1280]))

# seeded; deterministic=True (torch deterministic algorithms) made training about 5x
# slower on a 2-core CPU here, so it is off
randomness = dict(seed=0, deterministic=False)
