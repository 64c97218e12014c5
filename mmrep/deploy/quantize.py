"""Static INT8 quantization of an exported fp32 ONNX model with onnxruntime, and what it costs.

After :func:`~mmrep.deploy.pipeline.export_and_verify` has written and
checked the fp32 ``end2end.onnx``, :func:`quantize_and_measure`

1. calibrates on held-out images (:mod:`mmrep.deploy.calibration`: training
   images by default, or val images then left out of the evaluation), read
   through the data set's test pipeline and the model's data preprocessor,
   exactly as at evaluation time;
2. quantizes with ``onnxruntime.quantization.quantize_static``: QDQ format,
   per-channel int8 weights, uint8 activations, the convs (and any other op
   types asked for), activation ranges by ``calib_method``: ``minmax``,
   ``entropy`` (KL divergence of histograms) or ``percentile`` (99.999th);
3. runs the INT8 model and compares it with the fp32 model on the check
   image, times both in onnxruntime, and with ``evaluate=True`` evaluates
   both (and the fused PyTorch model) on the held-out images with the config's
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
import tempfile
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import onnx
import torch

from mmrep.engine.measure import time_ms

from .calibration import (HeldOutSplit, Int8InputError,  # noqa: F401
                          PreprocessedInputs, onnx_input, shape_mismatch)
from .compare import clip_to_image, compare_predictions
from .evaluation import evaluate_models

# mmdeploy task types we quantize (instance segmentation runs as ObjectDetection with masks)
SUPPORTED_TASKS = ('ObjectDetection', 'Segmentation')
# ONNX domains onnxruntime.quantization can load without extra libraries
STANDARD_DOMAINS = ('', 'ai.onnx', 'com.microsoft')
DEFAULT_OP_TYPES = ('Conv',)
# per-channel QDQ needs DequantizeLinear's ``axis``, which ONNX has from opset 13
PER_CHANNEL_MIN_OPSET = 13
CALIB_METHODS = ('minmax', 'entropy', 'percentile')
DEFAULT_CALIB_METHOD = 'minmax'


def check_int8_task(task: str) -> None:
    """Refuse, naming the reason, a task the INT8 path does not support."""
    if task not in SUPPORTED_TASKS:
        raise Int8InputError(f'--int8 supports the mmdeploy tasks {", ".join(SUPPORTED_TASKS)}; '
                             f'the deploy config has task {task!r}')


def check_calib_method(method: str) -> None:
    if method not in CALIB_METHODS:
        raise Int8InputError(f'--calib-method for onnxruntime must be one of '
                             f'{", ".join(CALIB_METHODS)}, got {method!r}')


def check_graph_quantizable(onnx_path: str) -> None:
    """Refuse a graph whose custom ops the calibration session cannot load."""
    custom = sorted({f'{n.domain}::{n.op_type}' for n in onnx.load(onnx_path).graph.node
                     if n.domain not in STANDARD_DOMAINS})
    if custom:
        raise Int8InputError(f'the exported graph uses custom ops {custom}, which '
                             'onnxruntime.quantization cannot load for calibration')


class PipelineCalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over preprocessed images.

    ``inputs``: re-iterable ``{input name: array}`` feeds
    (:class:`~mmrep.deploy.calibration.PreprocessedInputs`). A feed that does
    not fit the graph's static ``input_dims`` raises :class:`Int8InputError`
    (:func:`~mmrep.deploy.calibration.check_static_inputs` refuses such images
    before the export already; this guards direct use).
    """

    def __init__(self, inputs, input_dims: Sequence[Optional[int]]):
        self.inputs, self.input_dims = inputs, list(input_dims)
        self.count = 0
        self._feeds: Optional[Iterator] = None

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._feeds is None:
            self._feeds = iter(self.inputs)
        feed = next(self._feeds, None)
        if feed is None:
            return None
        for name, array in feed.items():
            if shape_mismatch(array.shape, self.input_dims):
                raise Int8InputError(
                    f'calibration image {self.count} has shape {list(array.shape)} but the ONNX '
                    f'input {name!r} is fixed to {self.input_dims}: export with a dynamic-shape '
                    'deploy config instead (for detection configs/deploy/detection_onnxruntime_dynamic.py)')
        self.count += 1
        return feed

    def rewind(self) -> None:
        self._feeds = None


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


# Histogram settings of the calibrators. onnxruntime's quantize_static gives its
# entropy calibrator 128 histogram bins and 128 quantized bins: then the only
# candidate range is the whole one and "entropy" equals minmax. TensorRT's
# entropy calibration (the one the YOLOv7 PTQ figures used) histograms |x| in
# 2048 bins and looks for the 128-level clipping closest in KL divergence.
# onnxruntime's histogram spans [-max, max] with the zero bin in the middle, so
# the same search per side needs 4096 bins and 256 quantized bins.
CALIBRATOR_OPTIONS = dict(minmax={}, entropy=dict(num_bins=4096, num_quantized_bins=256),
                          percentile=dict(num_bins=2048, percentile=99.999))


def calibrated_ranges(onnx_path: str, reader, calib_method: str = DEFAULT_CALIB_METHOD,
                      op_types: Optional[Sequence[str]] = DEFAULT_OP_TYPES):
    """Activation ranges of the ``op_types`` tensors over ``reader``'s inputs (onnxruntime TensorsData)."""
    from pathlib import Path

    from onnxruntime.quantization import CalibrationMethod, create_calibrator
    check_calib_method(calib_method)
    method = {'minmax': CalibrationMethod.MinMax, 'entropy': CalibrationMethod.Entropy,
              'percentile': CalibrationMethod.Percentile}[calib_method]
    with tempfile.TemporaryDirectory(prefix='mmrep-calibrate-') as tmp:
        calibrator = create_calibrator(
            Path(onnx_path), list(op_types) if op_types is not None else None,
            augmented_model_path=osp.join(tmp, 'augmented.onnx'), calibrate_method=method,
            providers=['CPUExecutionProvider'], extra_options=CALIBRATOR_OPTIONS[calib_method])
        try:
            calibrator.collect_data(reader)
            return calibrator.compute_data()
        except ValueError as exc:
            if 'bins' not in str(exc):
                raise
            # the histogram calibrators cannot bin a tensor whose values hardly vary over
            # the calibration images (e.g. an untrained head's output)
            raise Int8InputError(
                f'onnxruntime\'s {calib_method} calibration failed: {exc} (a tensor hardly varies '
                'over the calibration images); calibrate on more images or use '
                '--calib-method minmax') from exc


def quantize_onnx(fp32_path: str, int8_path: str, reader,
                  op_types: Optional[Sequence[str]] = DEFAULT_OP_TYPES,
                  calib_method: str = DEFAULT_CALIB_METHOD) -> None:
    """QDQ static quantization: per-channel int8 weights, uint8 activations.

    ``op_types``: the ONNX op types to quantize; None for every type
    onnxruntime can quantize. ``calib_method``: how activation ranges are
    chosen (``CALIB_METHODS``, :func:`calibrated_ranges`). A graph older
    than opset 13 (mmdeploy exports opset 11) is converted first, into a
    temporary file: per-channel QDQ needs opset 13. Only ``int8_path`` is written.

    This is ``onnxruntime.quantization.quantize_static`` with the calibration
    done by :func:`calibrated_ranges` (its histogram settings).
    """
    from onnxruntime.quantization import QDQQuantizer, QuantType
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from pathlib import Path
    if op_types is None:  # every type onnxruntime quantizes, as quantize_static takes None
        op_types = sorted(set(QDQRegistry) | set(QLinearOpsRegistry))
    with tempfile.TemporaryDirectory(prefix='mmrep-quantize-') as tmp:
        source = _at_least_opset(fp32_path, PER_CHANNEL_MIN_OPSET,
                                 osp.join(tmp, f'opset{PER_CHANNEL_MIN_OPSET}.onnx'))
        ranges = calibrated_ranges(source, reader, calib_method, op_types)
        quantizer = QDQQuantizer(
            load_model_with_shape_infer(Path(source)), True, False, QuantType.QInt8,
            QuantType.QUInt8, ranges, None, None,
            list(op_types) if op_types is not None else None, {})
        quantizer.quantize_model()
        quantizer.model.save_model_to_file(int8_path, False)


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


def quantize_and_measure(processor, cfg, onnx_path: str, work_dir: str, task: str,
                         check_data: dict, fp32_model, split: HeldOutSplit, torch_model=None,
                         calib_method: str = DEFAULT_CALIB_METHOD,
                         op_types: Sequence[str] = DEFAULT_OP_TYPES, threads: int = 1,
                         repeats: int = 20, top_k: int = 20,
                         max_drop: Optional[float] = None) -> dict:
    """Quantize ``onnx_path`` to INT8 and measure it against the fp32 model.

    Args:
        processor: the mmdeploy task processor of the fused config.
        cfg: the model config (its evaluator is used).
        onnx_path: the verified fp32 export.
        work_dir: where ``end2end_int8.onnx`` is written.
        task: the mmdeploy task type.
        check_data: the preprocessed check image (``processor.create_input``).
        fp32_model: the mmdeploy backend model of ``onnx_path``.
        split: calibration and (with ``split.evaluation``) evaluation images,
            disjoint (:func:`~mmrep.deploy.calibration.held_out_split`).
        torch_model: the fused PyTorch model, evaluated too.
        calib_method: activation range method (``CALIB_METHODS``).
        op_types: ONNX op types to quantize.
        threads: onnxruntime intra-op threads for the latency figures.
        repeats: timed runs per model (the median is reported).
        max_drop: points of accuracy the INT8 model may lose (None: no floor).

    Returns:
        the report's ``int8`` section; its ``errors`` list is empty when the
        INT8 model was built, quantizes the convs and stays within ``max_drop``.
    """
    check_int8_task(task)
    check_calib_method(calib_method)
    check_graph_quantizable(onnx_path)
    input_name, dims = onnx_input(onnx_path)

    def preprocess(batch):
        return fp32_model.data_preprocessor(copy.deepcopy(batch), False)['inputs']

    reader = PipelineCalibrationReader(PreprocessedInputs(split.calibration, preprocess, input_name),
                                       dims)
    int8_path = osp.join(work_dir, osp.splitext(osp.basename(onnx_path))[0] + '_int8.onnx')
    print(f'onnxruntime INT8: calibrating ({calib_method}) on {len(split.calibration_ids)} '
          f'{split.calibration_source} images', flush=True)
    quantize_onnx(onnx_path, int8_path, reader, op_types, calib_method)
    if reader.count == 0:
        raise Int8InputError('no calibration image was read')
    section = dict(onnx=int8_path, op_types=list(op_types), per_channel=True, format='QDQ',
                   weight_type='int8', activation_type='uint8', calibration_method=calib_method,
                   **split.report())
    section['graph'] = quantized_conv_count(int8_path)

    int8_model = processor.build_backend_model([int8_path])
    with torch.no_grad():
        ref = fp32_model.test_step(copy.deepcopy(check_data))[0]
        test = int8_model.test_step(copy.deepcopy(check_data))[0]
    clip_to_image(ref)
    clip_to_image(test)
    section['agreement_with_fp32'] = compare_predictions(task, ref, test, top_k)

    feed = {input_name: preprocess(check_data).numpy().astype(np.float32)}
    warmup = 3 if repeats >= 10 else 1
    section['latency_ms_fp32'] = session_latency_ms(onnx_path, feed, threads, repeats, warmup)
    section['latency_ms_int8'] = session_latency_ms(int8_path, feed, threads, repeats, warmup)
    section.update(latency_threads=threads, latency_repeats=repeats,
                   latency_input_shape=list(feed[input_name].shape),
                   speedup=section['latency_ms_fp32'] / section['latency_ms_int8'])

    errors = []
    if section['graph']['quantized_convs'] == 0:
        errors.append('the INT8 model has no quantized Conv')
    if split.evaluation is not None:
        labels = dict(torch_fp32='PyTorch fp32 (fused)', fp32='ONNX fp32 (onnxruntime)',
                      int8='ONNX INT8 (onnxruntime)')
        models = dict(torch_fp32=torch_model, fp32=fp32_model, int8=int8_model)
        errors += evaluate_models(
            section, cfg, split, task, task != 'Segmentation' and 'masks' in ref.pred_instances,
            {k: m for k, m in models.items() if m is not None}, labels, 'fp32', 'int8', max_drop)
    section['errors'] = errors
    return section
