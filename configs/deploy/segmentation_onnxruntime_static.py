# Semantic segmentation -> static ONNX (argmax inside the graph) -> onnxruntime.
_base_ = ['./_base_/onnx_config.py']
onnx_config = dict(output_names=['output'], input_shape=None)
codebase_config = dict(
    type='mmseg', task='Segmentation', with_argmax=True, module=['mmrep.deploy.mmdeploy_setup'])
