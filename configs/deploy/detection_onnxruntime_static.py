# Detector -> ONNX (static shape taken from the test pipeline) -> onnxruntime.
_base_ = ['./_base_/detection_base.py']
onnx_config = dict(output_names=['dets', 'labels'], input_shape=None)
