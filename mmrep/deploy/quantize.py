"""Static INT8 quantization of an exported fp32 ONNX model, and what it costs in accuracy.

After :func:`~mmrep.deploy.pipeline.export_and_verify` has written and
checked the fp32 ``end2end.onnx``, :func:`quantize_and_measure`

1. calibrates on ``N`` images of the model config's val (else test) data set,
   read through that data set's own test pipeline and the model's data
   preprocessor, exactly as at evaluation time;
2. quantizes with ``onnxruntime.quantization.quantize_static``: QDQ format,
   per-channel int8 weights, uint8 activations (MinMax ranges), the convs
   (and any other op types asked for);
3. runs the INT8 model and compares it with the fp32 model on the check
   image, times both in onnxruntime, and with ``evaluate=True`` evaluates
   both (and the fused PyTorch model) on the whole val set with the config's
   evaluator (COCO bbox/segm mAP, mIoU).

A fused RepVGG quantizes badly because its per-branch BNs let one output
channel of the fused kernel span a much larger range than another; the
quantization-friendly blocks (``quant_friendly=True``) avoid that, and this
module measures the difference.
"""
from __future__ import annotations

import copy
import os.path as osp
import statistics
from typing import Callable, Dict, Iterator, Optional, Sequence

import numpy as np
import onnx
import torch

from mmrep.engine.measure import time_ms

from .compare import compare_detections, compare_instances, compare_segmentation

# mmdeploy task types we quantize (instance segmentation runs as ObjectDetection with masks)
SUPPORTED_TASKS = ('ObjectDetection', 'Segmentation')
# ONNX domains onnxruntime.quantization can load without extra libraries
STANDARD_DOMAINS = ('', 'ai.onnx', 'com.microsoft')
DEFAULT_OP_TYPES = ('Conv',)
DEFAULT_CALIB_IMAGES = 32
# per-channel QDQ needs DequantizeLinear's ``axis``, which ONNX has from opset 13
PER_CHANNEL_MIN_OPSET = 13


class Int8InputError(ValueError):
    """The INT8 path cannot run on this input (no calibration images, unsupported task, ...)."""


def check_int8_request(cfg, task: str, calib_images: int) -> None:
    """Refuse, naming the reason, an INT8 run that cannot work; before any export work."""
    if task not in SUPPORTED_TASKS:
        raise Int8InputError(f'--int8 supports the mmdeploy tasks {", ".join(SUPPORTED_TASKS)}; '
                             f'the deploy config has task {task!r}')
    if calib_images < 1:
        raise Int8InputError(f'--calib-images must be at least 1, got {calib_images}')
    build_eval_dataloader(cfg, calib_images)  # raises when there is no image


def check_graph_quantizable(onnx_path: str) -> None:
    """Refuse a graph whose custom ops the calibration session cannot load."""
    custom = sorted({f'{n.domain}::{n.op_type}' for n in onnx.load(onnx_path).graph.node
                     if n.domain not in STANDARD_DOMAINS})
    if custom:
        raise Int8InputError(f'the exported graph uses custom ops {custom}, which '
                             'onnxruntime.quantization cannot load for calibration')


def build_eval_dataloader(cfg, limit: Optional[int] = None):
    """The config's val (else test) data set, one image per batch, in order.

    The data set keeps its own pipeline (the real test pipeline). ``limit``
    keeps the first images only.
    """
    from mmengine.registry import DATASETS
    from mmengine.runner import Runner
    source = cfg.get('val_dataloader') or cfg.get('test_dataloader')
    if not source or 'dataset' not in source:
        raise Int8InputError('the model config has no val_dataloader or test_dataloader '
                             'with a dataset to calibrate and evaluate on')
    # no serialization: one process reads it, and mmengine cannot serialize an empty set
    dataset = DATASETS.build(dict(copy.deepcopy(source['dataset']), serialize_data=False))
    if len(dataset) == 0:
        raise Int8InputError(f'the val/test data set of the model config has no images '
                             f"(data_root {getattr(dataset, 'data_root', '')!r}, "
                             f"ann_file {getattr(dataset, 'ann_file', '')!r})")
    if limit is not None and limit < len(dataset):
        dataset.get_subset_(int(limit))
    loader = dict(copy.deepcopy({k: v for k, v in source.items() if k != 'dataset'}),
                  dataset=dataset, batch_size=1, num_workers=0, persistent_workers=False,
                  sampler=dict(type='DefaultSampler', shuffle=False))
    return Runner.build_dataloader(loader)


def _input_name_and_shape(onnx_path: str):
    graph_input = onnx.load(onnx_path).graph.input[0]
    dims = [d.dim_value if d.HasField('dim_value') else None
            for d in graph_input.type.tensor_type.shape.dim]
    return graph_input.name, dims


def _check_static_shape(array: np.ndarray, dims: list, what: str) -> None:
    if any(d is not None and d != s for d, s in zip(dims, array.shape)):
        raise Int8InputError(
            f'{what} has shape {list(array.shape)} but the ONNX input is fixed to {dims}: '
            'images of this data set do not all reach the exported size through the test '
            'pipeline; export with a dynamic-shape deploy config instead (for detection '
            'configs/deploy/detection_onnxruntime_dynamic.py)')


class PipelineCalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over the first N data set images.

    Each image goes through the data set's test pipeline and the model's data
    preprocessor, lazily (large images are not all held in memory).
    """

    def __init__(self, dataloader, preprocess: Callable[[dict], torch.Tensor],
                 input_name: str, input_dims: list):
        self.dataloader, self.preprocess = dataloader, preprocess
        self.input_name, self.input_dims = input_name, input_dims
        self.count = 0
        self._batches: Optional[Iterator] = None

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._batches is None:
            self._batches = iter(self.dataloader)
        batch = next(self._batches, None)
        if batch is None:
            return None
        array = self.preprocess(batch).numpy().astype(np.float32)
        _check_static_shape(array, self.input_dims, f'calibration image {self.count}')
        self.count += 1
        return {self.input_name: array}

    def rewind(self) -> None:
        self._batches = None


def _at_least_opset(onnx_path: str, opset: int, out_path: str) -> str:
    """``onnx_path``, or a copy converted to ``opset`` when its default domain is older."""
    model = onnx.load(onnx_path)
    current = max((o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')),
                  default=0)
    if current >= opset:
        return onnx_path
    from onnx import version_converter
    onnx.save(version_converter.convert_version(model, opset), out_path)
    return out_path


def quantize_onnx(fp32_path: str, int8_path: str, reader,
                  op_types: Optional[Sequence[str]] = DEFAULT_OP_TYPES) -> None:
    """QDQ static quantization: per-channel int8 weights, uint8 activations (MinMax).

    ``op_types``: the ONNX op types to quantize; None for every type
    onnxruntime can quantize. A graph older than opset 13 (mmdeploy exports
    opset 11) is converted first, into ``<int8_path>.opset13.onnx``:
    per-channel QDQ needs opset 13.
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    fp32_path = _at_least_opset(fp32_path, PER_CHANNEL_MIN_OPSET,
                                osp.splitext(int8_path)[0] + f'.opset{PER_CHANNEL_MIN_OPSET}.onnx')
    quantize_static(fp32_path, int8_path, reader, quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=list(op_types) if op_types is not None else None,
                    calibrate_method=CalibrationMethod.MinMax)


def quantized_conv_count(int8_path: str) -> dict:
    """Conv nodes, and those whose weight comes through a DequantizeLinear (int8)."""
    graph = onnx.load(int8_path).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == 'DequantizeLinear'}
    convs = [n for n in graph.node if n.op_type == 'Conv']
    return dict(conv_nodes=len(convs),
                quantized_convs=sum(n.input[1] in dequantized for n in convs),
                quantize_nodes=sum(n.op_type == 'QuantizeLinear' for n in graph.node))


def cpu_session(onnx_path: str, threads: int = 1):
    """An onnxruntime CPU session with ``threads`` intra-op threads (one inter-op)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_path, options, providers=['CPUExecutionProvider'])


def session_latency_ms(onnx_path: str, feed: Dict[str, np.ndarray], threads: int = 1,
                       repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of one onnxruntime run (CPU, ``threads`` intra-op threads)."""
    session = cpu_session(onnx_path, threads)
    return statistics.median(time_ms(lambda: session.run(None, feed), repeats, warmup))


def compare_predictions(task: str, ref, test, top_k: int = 20) -> dict:
    """Agreement of two models' data samples (the fp32 model as reference)."""
    if task == 'Segmentation':
        return compare_segmentation(ref.pred_sem_seg, test.pred_sem_seg)
    if 'masks' in ref.pred_instances and 'masks' in test.pred_instances:
        cmp = compare_instances(ref.pred_instances, test.pred_instances, top_k)
    else:
        cmp = compare_detections(ref.pred_instances, test.pred_instances, top_k)
    cmp.pop('_pairs', None)
    return cmp


def evaluate_model(model, cfg, dataloader) -> dict:
    """Metrics of ``model.test_step`` over the data set, with the config's val evaluator."""
    from mmengine.evaluator import Evaluator
    evaluator_cfg = cfg.get('val_evaluator') or cfg.get('test_evaluator')
    evaluator = Evaluator(copy.deepcopy(evaluator_cfg))
    evaluator.dataset_meta = dataloader.dataset.metainfo
    with torch.no_grad():
        for batch in dataloader:
            evaluator.process(model.test_step(batch), batch)
    return evaluator.evaluate(len(dataloader.dataset))


def _metric(metrics: dict, name: str) -> Optional[float]:
    """``bbox_mAP`` from ``coco/bbox_mAP``, ``mIoU`` from ``mIoU``.

    mmdet's CocoMetric returns nothing when the model detected nothing: that is
    mAP 0. A metric missing from a non-empty result is None (not computed).
    """
    for key, value in metrics.items():
        if key.split('/')[-1] == name:
            return float(value)
    return 0.0 if not metrics else None


def quantize_and_measure(processor, cfg, onnx_path: str, work_dir: str, task: str,
                         check_data: dict, fp32_model, torch_model=None,
                         calib_images: int = DEFAULT_CALIB_IMAGES, evaluate: bool = False,
                         op_types: Sequence[str] = DEFAULT_OP_TYPES, threads: int = 1,
                         repeats: int = 20, top_k: int = 20) -> dict:
    """Quantize ``onnx_path`` to INT8 and measure it against the fp32 model.

    Args:
        processor: the mmdeploy task processor of the fused config.
        cfg: the model config (its val/test data set and evaluator are used).
        onnx_path: the verified fp32 export.
        work_dir: where ``end2end_int8.onnx`` is written.
        task: the mmdeploy task type.
        check_data: the preprocessed check image (``processor.create_input``).
        fp32_model: the mmdeploy backend model of ``onnx_path``.
        torch_model: the fused PyTorch model, evaluated too when ``evaluate``.
        calib_images: how many val images calibrate the activation ranges.
        evaluate: evaluate fp32 and INT8 models on the whole val set.
        op_types: ONNX op types to quantize.
        threads: onnxruntime intra-op threads for the latency figures.
        repeats: timed runs per model (the median is reported).

    Returns:
        the report's ``int8`` section; its ``errors`` list is empty when the
        INT8 model was built and quantizes the convs.
    """
    check_int8_request(cfg, task, calib_images)
    check_graph_quantizable(onnx_path)
    input_name, dims = _input_name_and_shape(onnx_path)
    calib_loader = build_eval_dataloader(cfg, calib_images)

    def preprocess(batch):
        return fp32_model.data_preprocessor(copy.deepcopy(batch), False)['inputs']

    reader = PipelineCalibrationReader(calib_loader, preprocess, input_name, dims)
    int8_path = osp.join(work_dir, osp.splitext(osp.basename(onnx_path))[0] + '_int8.onnx')
    quantize_onnx(onnx_path, int8_path, reader, op_types)
    if reader.count == 0:
        raise Int8InputError('no calibration image was read from the val/test data set')
    section = dict(onnx=int8_path, calibration_images=reader.count,
                   calibration_source=calib_loader.dataset.__class__.__name__,
                   op_types=list(op_types), per_channel=True, format='QDQ',
                   weight_type='int8', activation_type='uint8', calibration='MinMax')
    section['graph'] = quantized_conv_count(int8_path)

    int8_model = processor.build_backend_model([int8_path])
    with torch.no_grad():
        ref = fp32_model.test_step(copy.deepcopy(check_data))[0]
        test = int8_model.test_step(copy.deepcopy(check_data))[0]
    section['agreement_with_fp32'] = compare_predictions(task, ref, test, top_k)

    feed = {input_name: preprocess(check_data).numpy().astype(np.float32)}
    section['latency_ms_fp32'] = session_latency_ms(onnx_path, feed, threads, repeats)
    section['latency_ms_int8'] = session_latency_ms(int8_path, feed, threads, repeats)
    section.update(latency_threads=threads, latency_input_shape=list(feed[input_name].shape),
                   speedup=section['latency_ms_fp32'] / section['latency_ms_int8'])

    if evaluate:
        loader = build_eval_dataloader(cfg)
        names = (['mIoU'] if task == 'Segmentation'
                 else ['bbox_mAP', 'segm_mAP'] if 'masks' in ref.pred_instances else ['bbox_mAP'])
        models = dict(fp32=fp32_model, int8=int8_model)
        if torch_model is not None:
            models['torch_fp32'] = torch_model
        metrics = {kind: evaluate_model(model, cfg, loader) for kind, model in models.items()}
        section['eval_images'] = len(loader.dataset)
        section['metrics'] = metrics
        for name in names:
            for kind in models:
                section[f'{name}_{kind}'] = _metric(metrics[kind], name)
            fp32, int8 = section[f'{name}_fp32'], section[f'{name}_int8']
            if fp32 is not None and int8 is not None:
                section[f'{name}_drop'] = fp32 - int8

    errors = []
    if section['graph']['quantized_convs'] == 0:
        errors.append('the INT8 model has no quantized Conv')
    section['errors'] = errors
    return section
