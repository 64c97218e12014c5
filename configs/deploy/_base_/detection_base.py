# Detection codebase settings; `module` imports mmrep.deploy.mmdeploy_setup (fusion in
# mmdeploy's own tools, torch>=2.9 export fixes, exact adaptive pooling).
_base_ = ['./onnx_config.py']
codebase_config = dict(
    type='mmdet',
    task='ObjectDetection',
    model_type='end2end',
    module=['mmrep.deploy.mmdeploy_setup'],
    post_processing=dict(
        score_threshold=0.05,
        confidence_threshold=0.005,
        iou_threshold=0.5,
        max_output_boxes_per_class=200,
        pre_top_k=5000,
        keep_top_k=100,
        background_label_id=-1))
