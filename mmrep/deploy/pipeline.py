"""Unfused checkpoint -> fused model -> ONNX (mmdeploy) -> onnxruntime, verified.

Fusing happens here, on the whole model (backbone and neck), with
:func:`mmrep.reparameterize_model`; mmdeploy then exports the fused config and
checkpoint written by :func:`save_fused` and never sees a multi-branch block.
"""
from __future__ import annotations

import copy
import json
import os
import os.path as osp
from typing import Optional, Union

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import mmrep  # noqa: F401  (registers the models)
from mmrep.engine.deploy_utils import load_checked, save_fused
from mmrep.reparam import count_unfused

from .compare import (compare_detections, compare_instances, compare_segmentation,
                      compare_segmentation_logits)
from .graph_checks import check_onnx_graph, count_conv2d_run

# maximal PyTorch/onnxruntime disagreement accepted by default
# (``max_unmatched``: top-k PyTorch detections allowed without a backend match;
# two-stage detectors pick RPN proposals per level in mmdet but over all
# levels in mmdeploy, so near-tie proposals of an untrained model may differ)
TOLERANCES = dict(box_abs=1.0, score_abs=1e-3, min_box_iou=0.95, min_mask_iou=0.9,
                  logits_rel=1e-3, max_unmatched=0)


class ExportCheckError(RuntimeError):
    """The exported model is not the fused network or disagrees with PyTorch."""


def _verdict(task: str, cmp: dict, tol: dict) -> list:
    errors = []
    if task == 'Segmentation':
        # The logits must agree. Labels may still differ where logits tie (an
        # untrained head) and where mmdeploy resizes labels to the original size
        # (nearest) but mmseg resizes logits (bilinear) before the argmax; the
        # pixel agreement is reported, not judged.
        if cmp['logits_rel_diff'] > tol['logits_rel']:
            errors.append(f"logits differ by {cmp['logits_rel_diff']:.3g} of their scale "
                          f"> {tol['logits_rel']} (pixel agreement {cmp['pixel_agreement']:.4f})")
        return errors
    if cmp['compared'] == 0:
        errors.append('PyTorch made no detection to compare (lower test_cfg.score_thr?)')
    if cmp['unmatched'] > tol['max_unmatched']:
        errors.append(f"{cmp['unmatched']} of the top {cmp['compared']} PyTorch detections "
                      'have no onnxruntime counterpart')
    if cmp['matched']:
        if cmp['max_box_abs_diff'] > tol['box_abs']:
            errors.append(f"box diff {cmp['max_box_abs_diff']:.4g} px > {tol['box_abs']}")
        if cmp['max_score_abs_diff'] > tol['score_abs']:
            errors.append(f"score diff {cmp['max_score_abs_diff']:.4g} > {tol['score_abs']}")
        if cmp['min_iou'] < tol['min_box_iou']:
            errors.append(f"box IoU {cmp['min_iou']:.4f} < {tol['min_box_iou']}")
        if cmp.get('min_mask_iou') is not None and cmp['min_mask_iou'] < tol['min_mask_iou']:
            errors.append(f"mask IoU {cmp['min_mask_iou']:.4f} < {tol['min_mask_iou']}")
    return errors


def _onnx_logits(onnx_path: str, inputs: torch.Tensor) -> np.ndarray:
    """The class logits of a segmentation export: the input of its ArgMax, if any."""
    import onnx
    import onnxruntime as ort
    model = onnx.load(onnx_path)
    argmax = [n for n in model.graph.node if n.op_type == 'ArgMax']
    if argmax:
        model.graph.output.insert(0, onnx.helper.make_tensor_value_info(
            argmax[-1].input[0], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
    feed = {session.get_inputs()[0].name: inputs.numpy().astype(np.float32)}
    return session.run([model.graph.output[0].name], feed)[0]


def segmentation_logits(torch_model, onnx_path: str, data: dict):
    """Logits of the fused PyTorch segmentor and of its export, at the network input size."""
    batch = torch_model.data_preprocessor(copy.deepcopy(data), False)
    metas = [sample.metainfo for sample in batch['data_samples']]
    with torch.no_grad():
        ref = torch_model.encode_decode(batch['inputs'], metas)
    return ref, _onnx_logits(onnx_path, batch['inputs'])


def export_and_verify(deploy_cfg: Union[str, Config], model_cfg: Union[str, Config],
                      checkpoint: str, image: str, work_dir: str, device: str = 'cpu',
                      tolerances: Optional[dict] = None, top_k: int = 20,
                      int8: Optional[dict] = None) -> dict:
    """Fuse, export, run in onnxruntime and compare; write ``work_dir/report.json``.

    With ``int8`` (keyword arguments of
    :func:`~mmrep.deploy.quantize.quantize_and_measure`, e.g.
    ``dict(calib_images=32, evaluate=True)``) the verified fp32 export is then
    quantized to INT8 and measured; the report gets an ``int8`` section.

    Returns the report; its ``errors`` list is empty when everything agrees
    (the caller decides whether to raise, see :class:`ExportCheckError`).
    """
    from mmdeploy.apis import build_task_processor, torch2onnx
    from mmdeploy.utils import get_input_shape, get_task_type, load_config

    from .mmdeploy_setup import setup_mmdeploy
    setup_mmdeploy()

    tol = dict(TOLERANCES, **(tolerances or {}))
    os.makedirs(work_dir, exist_ok=True)
    deploy_cfg = load_config(deploy_cfg)[0]
    cfg = model_cfg if isinstance(model_cfg, Config) else Config.fromfile(model_cfg)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    task = get_task_type(deploy_cfg).value
    if int8 is not None:  # refuse bad INT8 input before the export work
        from .quantize import DEFAULT_CALIB_IMAGES, check_int8_request
        check_int8_request(cfg, task, int8.get('calib_images', DEFAULT_CALIB_IMAGES))

    model = MODELS.build(copy.deepcopy(cfg.model))
    source = load_checked(model, checkpoint)
    model.eval()
    fused_ckpt, fused_cfg = osp.join(work_dir, 'fused.pth'), osp.join(work_dir, 'fused_config.py')
    fused = save_fused(model, cfg, fused_ckpt, fused_cfg, overwrite=True,
                       meta=dict(source_checkpoint=osp.abspath(checkpoint)),
                       source_meta=source.get('meta') or {})

    save_file = deploy_cfg.onnx_config.save_file
    torch2onnx(image, work_dir, save_file, deploy_cfg, fused_cfg, fused_ckpt, device)
    onnx_path = osp.join(work_dir, save_file)

    processor = build_task_processor(Config.fromfile(fused_cfg), deploy_cfg, device)
    torch_model = processor.build_pytorch_model(fused_ckpt)
    backend_model = processor.build_backend_model([onnx_path])
    data, _ = processor.create_input(image, get_input_shape(deploy_cfg))
    with torch.no_grad():
        ref, conv2d_run = count_conv2d_run(
            torch_model, lambda: torch_model.test_step(copy.deepcopy(data))[0])
        test = backend_model.test_step(copy.deepcopy(data))[0]

    if task == 'Segmentation':
        cmp = compare_segmentation(ref.pred_sem_seg, test.pred_sem_seg)
        cmp.update(compare_segmentation_logits(*segmentation_logits(torch_model, onnx_path, data)))
    elif 'masks' in ref.pred_instances and 'masks' in test.pred_instances:
        cmp = compare_instances(ref.pred_instances, test.pred_instances, top_k)
    else:
        cmp = compare_detections(ref.pred_instances, test.pred_instances, top_k)
    cmp.pop('_pairs', None)

    graph = check_onnx_graph(onnx_path, fused, conv2d_run)
    errors = list(graph['errors'])
    if count_unfused(torch_model):
        errors.append(f'{count_unfused(torch_model)} unfused blocks in the exported model')
    errors += _verdict(task, cmp, tol)
    report = dict(task=task, onnx=onnx_path, fused_checkpoint=fused_ckpt, fused_config=fused_cfg,
                  image=image, input_shape=list(data['inputs'][0].shape) if 'inputs' in data else None,
                  graph=graph, agreement=cmp, tolerances=tol, errors=errors, ok=not errors)
    if int8 is not None:
        from .quantize import quantize_and_measure
        report['int8'] = quantize_and_measure(processor, cfg, onnx_path, work_dir, task, data,
                                              backend_model, torch_model, top_k=top_k, **int8)
        errors += [f'int8: {e}' for e in report['int8']['errors']]
        report['ok'] = not errors
    with open(osp.join(work_dir, 'report.json'), 'w') as f:
        json.dump(report, f, indent=2, default=str)
    return report
