# RetinaNet with RepGhostNet-1.0x and the re-parameterizable PAFPN neck:
# after fusion backbone and neck are plain convs (RetinaHead has no norms).
_base_ = './retinanet_repghost_1x.py'

model = dict(
    neck=dict(
        _delete_=True,
        type='RepPAFPN',
        in_channels=[24, 40, 112, 160],
        out_channels=256,
        start_level=1,
        add_extra_convs='on_input',
        num_outs=5))
