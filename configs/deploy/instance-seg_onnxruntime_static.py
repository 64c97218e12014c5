# Instance segmentation (e.g. Mask R-CNN) -> static ONNX -> onnxruntime.
_base_ = ['./_base_/detection_base.py']
onnx_config = dict(output_names=['dets', 'labels', 'masks'], input_shape=None)
codebase_config = dict(post_processing=dict(export_postprocess_mask=False))
