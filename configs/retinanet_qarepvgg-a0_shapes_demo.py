# RetinaNet-QARepVGG-A0 on the built-in shapes data: retinanet_repvgg-a0_shapes_demo.py
# with the quantization-friendly blocks (QARepVGG, arXiv 2212.01593), nothing else changed.
_base_ = './retinanet_repvgg-a0_shapes_demo.py'

model = dict(backbone=dict(quant_friendly=True))
