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

import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import mmrep  # noqa: F401  (registers the models)
from mmrep.engine.deploy_utils import load_checked, save_fused
from mmrep.reparam import count_unfused, reparameterize_model

from .compare import compare_detections, compare_instances, compare_segmentation
from .graph_checks import check_onnx_graph

# maximal PyTorch/onnxruntime disagreement accepted by default
# (``max_unmatched``: top-k PyTorch detections allowed without a backend match;
# two-stage detectors pick RPN proposals per level in mmdet but over all
# levels in mmdeploy, so near-tie proposals of an untrained model may differ)
TOLERANCES = dict(box_abs=1.0, score_abs=1e-3, min_box_iou=0.95, min_mask_iou=0.9,
                  pixel_agreement=0.99, max_unmatched=0)


class ExportCheckError(RuntimeError):
    """The exported model is not the fused network or disagrees with PyTorch."""


def _verdict(task: str, cmp: dict, tol: dict) -> list:
    errors = []
    if task == 'Segmentation':
        if cmp['pixel_agreement'] < tol['pixel_agreement']:
            errors.append(f"pixel agreement {cmp['pixel_agreement']:.4f} < {tol['pixel_agreement']}")
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


def export_and_verify(deploy_cfg: Union[str, Config], model_cfg: Union[str, Config],
                      checkpoint: str, image: str, work_dir: str, device: str = 'cpu',
                      tolerances: Optional[dict] = None, top_k: int = 20) -> dict:
    """Fuse, export, run in onnxruntime and compare; write ``work_dir/report.json``.

    Returns the report; its ``errors`` list is empty when everything agrees
    (the caller decides whether to raise, see :class:`ExportCheckError`).
    """
    from mmdeploy.apis import build_task_processor, torch2onnx
    from mmdeploy.utils import get_input_shape, get_task_type, load_config

    tol = dict(TOLERANCES, **(tolerances or {}))
    os.makedirs(work_dir, exist_ok=True)
    deploy_cfg = load_config(deploy_cfg)[0]
    cfg = model_cfg if isinstance(model_cfg, Config) else Config.fromfile(model_cfg)
    init_default_scope(cfg.get('default_scope', 'mmdet'))

    model = MODELS.build(copy.deepcopy(cfg.model))
    load_checked(model, checkpoint)
    model.eval()
    fused = reparameterize_model(model)
    fused_ckpt, fused_cfg = osp.join(work_dir, 'fused.pth'), osp.join(work_dir, 'fused_config.py')
    save_fused(model, cfg, fused_ckpt, fused_cfg, overwrite=True,
               meta=dict(source_checkpoint=osp.abspath(checkpoint)))

    save_file = deploy_cfg.onnx_config.save_file
    torch2onnx(image, work_dir, save_file, deploy_cfg, fused_cfg, fused_ckpt, device)
    onnx_path = osp.join(work_dir, save_file)

    processor = build_task_processor(Config.fromfile(fused_cfg), deploy_cfg, device)
    torch_model = processor.build_pytorch_model(fused_ckpt)
    backend_model = processor.build_backend_model([onnx_path])
    data, _ = processor.create_input(image, get_input_shape(deploy_cfg))
    with torch.no_grad():
        ref = torch_model.test_step(copy.deepcopy(data))[0]
        test = backend_model.test_step(copy.deepcopy(data))[0]

    task = get_task_type(deploy_cfg).value
    if task == 'Segmentation':
        cmp = compare_segmentation(ref.pred_sem_seg, test.pred_sem_seg)
    elif 'masks' in ref.pred_instances and 'masks' in test.pred_instances:
        cmp = compare_instances(ref.pred_instances, test.pred_instances, top_k)
    else:
        cmp = compare_detections(ref.pred_instances, test.pred_instances, top_k)
    cmp.pop('_pairs', None)

    graph = check_onnx_graph(onnx_path, fused)
    errors = list(graph['errors'])
    if count_unfused(torch_model):
        errors.append(f'{count_unfused(torch_model)} unfused blocks in the exported model')
    errors += _verdict(task, cmp, tol)
    report = dict(task=task, onnx=onnx_path, fused_checkpoint=fused_ckpt, fused_config=fused_cfg,
                  image=image, input_shape=list(data['inputs'][0].shape) if 'inputs' in data else None,
                  graph=graph, agreement=cmp, tolerances=tol, errors=errors, ok=not errors)
    with open(osp.join(work_dir, 'report.json'), 'w') as f:
        json.dump(report, f, indent=2, default=str)
    return report
