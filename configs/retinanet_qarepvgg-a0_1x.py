# RetinaNet with a QARepVGG-A0 backbone (RepVGG-A0 with quantization-friendly
# blocks, arXiv 2212.01593), COCO 1x schedule. Fuses to the same plain network as
# RepVGG-A0; deploy it to INT8 with tools/deploy.py ... --int8.
_base_ = './retinanet_repvgg-a0_1x.py'

# No ImageNet weights: neither the QARepVGG paper, timm nor mmpretrain publishes any, and
# RepVGG-A0's do not fit these blocks (no BN on the 1x1 and identity branches, one after
# the sum). So the backbone is spelled out without the base's init_cfg: it starts from
# random weights, and a child's init_cfg=dict(type='Pretrained', ...) still merges.
model = dict(
    backbone=dict(
        _delete_=True,
        type='RepVGG',
        arch='A0',
        quant_friendly=True,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False))
