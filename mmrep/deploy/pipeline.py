"""Unfused checkpoint -> fused model -> ONNX (mmdeploy) -> onnxruntime (and OpenVINO), verified.

Fusing happens here, on the whole model (backbone and neck), with
:func:`mmrep.reparameterize_model`; mmdeploy then exports the fused config and
checkpoint written by :func:`save_fused` and never sees a multi-branch block.
The export runs in onnxruntime and is compared with the fused PyTorch model;
then, as asked, quantized by onnxruntime (:mod:`mmrep.deploy.quantize`) or
compiled by OpenVINO (:mod:`mmrep.deploy.openvino_measure`), and evaluated on
held-out images (:mod:`mmrep.deploy.calibration`).

Everything the run would refuse (a task or option the path does not support,
an empty data set, images that do not fit a static-shape graph) is refused
before the export work.
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

from .calibration import (DEFAULT_CALIB_IMAGES, DeployInputError, Int8InputError,
                          check_static_inputs, held_out_split)
from .compare import (boxes_within_image, clip_to_image, compare_predictions,
                      compare_segmentation_logits)
from .evaluation import DEFAULT_MAX_DROP
from .graph_checks import check_onnx_graph, count_conv2d_run

# maximal PyTorch/onnxruntime disagreement accepted by default
# (``max_unmatched``: top-k PyTorch detections allowed without a backend match;
# two-stage detectors pick RPN proposals per level in mmdet but over all
# levels in mmdeploy, so near-tie proposals of an untrained model may differ)
TOLERANCES = dict(box_abs=1.0, score_abs=1e-3, min_box_iou=0.95, min_mask_iou=0.9,
                  logits_rel=1e-3, max_unmatched=0)


class ExportCheckError(RuntimeError):
    """The exported model is not the fused network or disagrees with PyTorch."""


def verdict(task: str, cmp: dict, tol: dict, backend: str = 'onnxruntime') -> list:
    """Errors for a backend's disagreement with the fused PyTorch model (empty: agrees)."""
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
                      f'have no {backend} counterpart')
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


def logits_graph(onnx_path: str, out_path: str) -> str:
    """A copy of a segmentation export whose first output is the class logits (its ArgMax input)."""
    import onnx
    model = onnx.load(onnx_path)
    argmax = [n for n in model.graph.node if n.op_type == 'ArgMax']
    if argmax:
        model.graph.output.insert(0, onnx.helper.make_tensor_value_info(
            argmax[-1].input[0], onnx.TensorProto.FLOAT, None))
    onnx.save(model, out_path)
    return out_path


def segmentation_logits(torch_model, onnx_path: str, data: dict, run_onnx=None):
    """Logits of the fused PyTorch segmentor and of its export, at the network input size.

    ``run_onnx(path, array) -> logits`` runs the logits graph (default: onnxruntime).
    """
    import tempfile
    batch = torch_model.data_preprocessor(copy.deepcopy(data), False)
    metas = [sample.metainfo for sample in batch['data_samples']]
    with torch.no_grad():
        ref = torch_model.encode_decode(batch['inputs'], metas)
    inputs = batch['inputs'].numpy().astype(np.float32)
    with tempfile.TemporaryDirectory(prefix='mmrep-logits-') as tmp:
        path = logits_graph(onnx_path, osp.join(tmp, 'logits.onnx'))
        if run_onnx is None:
            from .quantize import cpu_session
            session = cpu_session(path)
            logits = session.run(None, {session.get_inputs()[0].name: inputs})[0]
        else:
            logits = run_onnx(path, inputs)
    return ref, logits


def compare_with_torch(task: str, torch_model, ref, test, onnx_path: str, data: dict,
                       top_k: int, run_onnx=None) -> dict:
    """Agreement of a backend's prediction ``test`` with PyTorch's ``ref`` on the check image.

    Segmentation adds the class logits' agreement (labels alone cannot tell a
    real difference from ties, see
    :func:`~mmrep.deploy.compare.compare_segmentation_logits`).
    """
    cmp = compare_predictions(task, ref, test, top_k)
    if task == 'Segmentation':
        cmp.update(compare_segmentation_logits(
            *segmentation_logits(torch_model, onnx_path, data, run_onnx)))
    return cmp


def preprocessing_record(cfg: Config, data: dict, onnx_path: str) -> dict:
    """What an image goes through before the graph, and how outputs map back (report.json).

    Enough to run ``end2end.onnx`` without mmdeploy (``demo/onnx_inference.py``).
    """
    from .calibration import onnx_input
    name, dims = onnx_input(onnx_path)
    sample = data['data_samples'][0]
    meta = {k: (list(v) if isinstance(v, (tuple, np.ndarray)) else v)
            for k, v in sample.metainfo.items()
            if k in ('ori_shape', 'img_shape', 'pad_shape', 'scale_factor', 'batch_input_shape')}
    preprocessor = dict(cfg.model.get('data_preprocessor', {}))
    return dict(
        classes=_class_names(cfg),
        onnx_input=dict(name=name, shape=[d if d is not None else 'dynamic' for d in dims],
                        dtype='float32', layout='NCHW'),
        check_image=dict(meta, network_input_shape=list(data['inputs'].shape)
                         if isinstance(data.get('inputs'), torch.Tensor) else None),
        test_pipeline=[dict(step) for step in cfg.get('test_pipeline', [])],
        data_preprocessor=preprocessor,
        steps=['read the image as BGR uint8 (OpenCV)',
               'apply the test_pipeline Resize (mmcv.imresize, bilinear; keep_ratio: one scale '
               'factor that fits the image into scale)',
               'BGR -> RGB if data_preprocessor.bgr_to_rgb',
               '(x - mean) / std per channel, float32, HWC -> CHW, add the batch dim',
               'pad at the bottom and right with pad_value (0) to a multiple of pad_size_divisor '
               '(static graphs: exactly to onnx_input.shape)',
               'detection outputs: dets [1, N, 5] (x1, y1, x2, y2, score) in network-input '
               'pixels, labels [1, N]; keep score > 0, divide boxes by scale_factor (w, h), clip '
               'them to the original image (the graph clips at the padded input)'])


def _class_names(cfg: Config) -> Optional[list]:
    """The val set's class names: its config's ``metainfo``, else its data set class's."""
    from mmengine.registry import DATASETS
    dataset = (cfg.get('val_dataloader') or cfg.get('test_dataloader') or {}).get('dataset', {})
    classes = (dataset.get('metainfo') or {}).get('classes')
    if classes is None and dataset.get('type'):
        dataset_cls = DATASETS.get(dataset['type'])
        classes = getattr(dataset_cls, 'METAINFO', {}).get('classes')
    return list(classes) if classes is not None else None


def _expected_static_dims(processor, deploy_cfg, image: str, model) -> Optional[list]:
    """The input shape a static-shape export of ``image`` will have; None for dynamic configs."""
    from mmdeploy.utils import get_input_shape, is_dynamic_shape
    if is_dynamic_shape(deploy_cfg):
        return None
    _, inputs = processor.create_input(image, get_input_shape(deploy_cfg), model.data_preprocessor)
    return list(inputs.shape)


def export_and_verify(deploy_cfg: Union[str, Config], model_cfg: Union[str, Config],
                      checkpoint: str, image: str, work_dir: str, device: str = 'cpu',
                      tolerances: Optional[dict] = None, top_k: int = 20,
                      int8: Optional[dict] = None, openvino: Optional[dict] = None,
                      evaluate: bool = False, calib_images: int = DEFAULT_CALIB_IMAGES,
                      calib_from: str = 'train',
                      max_drop: Optional[float] = DEFAULT_MAX_DROP) -> dict:
    """Fuse, export, run in onnxruntime and compare; write ``work_dir/report.json``.

    Args:
        int8: onnxruntime INT8 after the fp32 export: keyword arguments of
            :func:`~mmrep.deploy.quantize.quantize_and_measure`
            (``calib_method``, ``threads``, ``op_types``, ...); the report
            gets an ``int8`` section.
        openvino: OpenVINO after the fp32 export: keyword arguments of
            :func:`~mmrep.deploy.openvino_measure.openvino_and_measure`
            (``precision``, ``preset``, ``threads``); the report gets an
            ``openvino`` section and ``end2end.xml``/``.bin`` are written.
        evaluate: with ``int8`` or ``openvino``, evaluate the models on
            held-out val images (not the calibration images).
        calib_images, calib_from: calibration images for INT8 (``'train'``:
            training images through the test pipeline; ``'val'``: val images,
            left out of the evaluation).
        max_drop: points of accuracy an INT8/bf16 model may lose against fp32
            with ``evaluate`` (None: no floor).

    Returns the report; its ``errors`` list is empty when everything agrees
    (the caller decides whether to raise, see :class:`ExportCheckError`).
    """
    from mmdeploy.apis import build_task_processor, torch2onnx
    from mmdeploy.utils import get_backend, get_input_shape, get_task_type, load_config

    from .mmdeploy_setup import setup_mmdeploy
    setup_mmdeploy()

    if int8 is not None and openvino is not None:
        raise DeployInputError('choose one: onnxruntime INT8 (int8=...) or OpenVINO (openvino=...)')
    tol = dict(TOLERANCES, **(tolerances or {}))
    deploy_cfg = load_config(deploy_cfg)[0]
    cfg = model_cfg if isinstance(model_cfg, Config) else Config.fromfile(model_cfg)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    task = get_task_type(deploy_cfg).value
    backend = get_backend(deploy_cfg).value
    if backend != 'onnxruntime':
        raise DeployInputError(
            f"the deploy config's backend is {backend!r}; mmrep exports with an onnxruntime "
            'deploy config (e.g. mmrep::configs/deploy/detection_onnxruntime_static.py) and runs '
            "the ONNX file in OpenVINO with --backend openvino (mmdeploy's own OpenVINO backend "
            'needs the removed Model Optimizer)')

    # refuse bad requests before the export work
    quantizing = int8 is not None or (openvino or {}).get('precision') == 'int8'
    if int8 is not None:
        from .quantize import DEFAULT_CALIB_METHOD, check_calib_method, check_int8_task
        check_int8_task(task)
        check_calib_method(int8.get('calib_method', DEFAULT_CALIB_METHOD))
    if openvino is not None:
        from .openvino_measure import check_openvino_request
        check_openvino_request(task, openvino)
    if evaluate and int8 is None and openvino is None:
        raise DeployInputError('evaluation compares an INT8 or OpenVINO model with fp32: '
                               'ask for --int8 or --backend openvino')
    split = None
    if quantizing or evaluate:
        split = held_out_split(cfg, calib_images if quantizing else None, calib_from, evaluate)

    model = MODELS.build(copy.deepcopy(cfg.model))
    source = load_checked(model, checkpoint)
    model.eval()
    if split is not None:
        dims = _expected_static_dims(build_task_processor(cfg, deploy_cfg, device),
                                     deploy_cfg, image, model)
        if dims is not None:
            print(f'checking the {len(split.calibration_ids) + len(split.evaluation_ids)} images '
                  f'of this run against the static input {dims}', flush=True)
            check_static_inputs(
                split, lambda batch: model.data_preprocessor(copy.deepcopy(batch), False)['inputs'],
                dims, Int8InputError if quantizing else DeployInputError,
                'mmrep::configs/deploy/detection_onnxruntime_dynamic.py'
                if task == 'ObjectDetection' else '')

    os.makedirs(work_dir, exist_ok=True)
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
    # the backend's boxes are clipped as PyTorch's are: to the image when PyTorch clips there
    # (mmdet's bbox coders; mmdeploy's graph clips at the padded input), not at all for a
    # head that does not clip (YOLOX), whose graph does not either
    clipped = clip_to_image(test) if boxes_within_image(ref) else 0
    cmp = compare_with_torch(task, torch_model, ref, test, onnx_path, data, top_k)
    if task != 'Segmentation':
        cmp['boxes_clipped_to_image'] = clipped

    graph = check_onnx_graph(onnx_path, fused, conv2d_run)
    errors = list(graph['errors'])
    if count_unfused(torch_model):
        errors.append(f'{count_unfused(torch_model)} unfused blocks in the exported model')
    errors += verdict(task, cmp, tol)
    preprocessed = torch_model.data_preprocessor(copy.deepcopy(data), False)
    report = dict(task=task, onnx=onnx_path, fused_checkpoint=fused_ckpt, fused_config=fused_cfg,
                  image=image, input_shape=list(preprocessed['inputs'].shape),
                  preprocessing=preprocessing_record(cfg, preprocessed, onnx_path),
                  graph=graph, agreement=cmp, tolerances=tol, errors=errors, ok=not errors)
    if int8 is not None:
        from .quantize import quantize_and_measure
        report['int8'] = quantize_and_measure(
            processor, cfg, onnx_path, work_dir, task, data, backend_model, split,
            torch_model, top_k=top_k, max_drop=max_drop, **int8)
        errors += [f'int8: {e}' for e in report['int8']['errors']]
    if openvino is not None:
        from .openvino import OpenVINOUnsupportedOpError, custom_ops
        from .openvino_measure import openvino_and_measure
        try:
            report['openvino'] = openvino_and_measure(
                processor, cfg, onnx_path, work_dir, task, data, torch_model, ref, split,
                tolerances=tol, top_k=top_k, max_drop=max_drop, **openvino)
        except OpenVINOUnsupportedOpError as exc:  # the onnxruntime export stands; say why not OpenVINO
            report['openvino'] = dict(unsupported_ops=custom_ops(onnx_path), errors=[str(exc)])
        errors += [f'openvino: {e}' for e in report['openvino']['errors']]
    report['ok'] = not errors
    with open(osp.join(work_dir, 'report.json'), 'w') as f:
        json.dump(report, f, indent=2, default=str)
    return report
