# Detector -> ONNX with dynamic batch and image size -> onnxruntime.
_base_ = ['./_base_/detection_base.py']
onnx_config = dict(
    output_names=['dets', 'labels'],
    input_shape=None,
    dynamic_axes=dict(
        input=dict({0: 'batch', 2: 'height', 3: 'width'}),
        dets=dict({0: 'batch', 1: 'num_dets'}),
        labels=dict({0: 'batch', 1: 'num_dets'})))
