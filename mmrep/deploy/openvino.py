"""OpenVINO as a deploy backend beside onnxruntime: read mmdeploy's ONNX export,
compile it at a chosen precision and thread count, quantize it to INT8 with NNCF.

mmdeploy 1.3's own OpenVINO backend calls the removed Model Optimizer and
``openvino.inference_engine``; this module uses the current API instead
(``openvino.Core().read_model`` on the ONNX file, ``nncf.quantize``)::

    from mmrep.deploy.openvino import compile_onnx
    model = compile_onnx('end2end.onnx', precision='bf16', threads=1)
    outputs = model({'input': array})          # list of numpy arrays, in output order
    model.inference_precision                  # what OpenVINO really runs: 'bf16'
    int8 = compile_onnx('end2end.onnx', 'int8', calibration=[{'input': a} for a in arrays])
    int8.save('end2end.xml')                   # IR: end2end.xml + end2end.bin

Precisions: ``f32``; ``bf16`` (AMX/AVX512-BF16 CPUs, about 1% of the output
scale away from f32); ``int8`` (NNCF post-training quantization of the
convolutions; the ops left in float run at OpenVINO's default float precision,
reported as ``inference_precision``). ``None`` is OpenVINO's own default, the
fastest float precision of the CPU (bf16 where the CPU has it).

Only the ``Convolution`` and ``GroupConvolution`` inputs are quantized, as the
onnxruntime INT8 path quantizes the ``Conv`` nodes: the rest of an mmdeploy
detection graph is box decoding and NMS, which int8 would ruin (and where
NNCF's statistics collection fails on the rank-2 tensors of the decoder).

openvino and nncf are optional (the ``deploy`` extra); they are imported when
used, nncf (slow to import) only when quantizing.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from mmrep import compat

PRECISIONS = ('f32', 'bf16', 'int8')
# nncf.QuantizationPreset: 'performance' = symmetric weights and activations,
# 'mixed' = symmetric weights, asymmetric activations
NNCF_PRESETS = ('performance', 'mixed')
DEFAULT_NNCF_PRESET = 'performance'
QUANTIZED_OP_TYPES = ('Convolution', 'GroupConvolution')
# ONNX domains OpenVINO's ONNX front end reads (besides its own org.openvinotoolkit ops)
STANDARD_DOMAINS = ('', 'ai.onnx', 'ai.onnx.ml', 'com.microsoft', 'org.openvinotoolkit')

# Ops of mmdeploy graphs that OpenVINO's ONNX front end has no conversion for,
# and the way round for each (measured with openvino 2026.4 on mmdeploy 1.3 exports).
_DCN_ADVICE = ('a deformable convolution (mmcv DeformConv2d / ModulatedDeformConv2d, e.g. '
               "conv_cfg=dict(type='DCNv2')): OpenVINO cannot read mmdeploy's onnxruntime op, and "
               "the standard ONNX DeformConv (opset 19) is not converted by it either; keep this "
               'model on onnxruntime (--backend onnxruntime loads mmdeploy\'s custom-op library), '
               'or replace the deformable convs with plain ones')
_NMS_ADVICE = ('the NMS op of a TensorRT deploy config: export with an onnxruntime deploy config '
               '(e.g. mmrep::configs/deploy/detection_onnxruntime_static.py), whose graph holds the '
               'standard ONNX NonMaxSuppression that OpenVINO reads')
UNSUPPORTED_OP_ADVICE = {
    'mmdeploy::MMCVModulatedDeformConv2d': _DCN_ADVICE,
    'mmdeploy::MMCVDeformConv2d': _DCN_ADVICE,
    'mmdeploy::TRTBatchedNMS': _NMS_ADVICE,
    'mmdeploy::TRTBatchedRotatedNMS': _NMS_ADVICE,
    'mmdeploy::grid_sampler': ('grid_sample exported below opset 16: export with '
                               'onnx_config.opset_version=16 or later (standard GridSample)'),
}
_GENERIC_ADVICE = ('a custom op of mmdeploy\'s onnxruntime (or TensorRT) op library: keep this model '
                   'on onnxruntime (--backend onnxruntime)')


class OpenVINOError(RuntimeError):
    """OpenVINO cannot run this model as asked (unknown precision, no calibration data, ...)."""


class OpenVINOUnsupportedOpError(OpenVINOError):
    """The ONNX graph holds ops that OpenVINO's ONNX front end cannot convert."""


def _core():
    import openvino as ov
    return ov.Core()


def custom_ops(onnx_path: str) -> Dict[str, int]:
    """``{'domain::OpType': count}`` of the nodes outside the domains OpenVINO reads."""
    import onnx
    graph = onnx.load(onnx_path, load_external_data=False).graph
    return dict(sorted(Counter(f'{n.domain}::{n.op_type}' for n in graph.node
                               if n.domain not in STANDARD_DOMAINS).items()))


def check_readable(onnx_path: str) -> None:
    """Refuse, naming each op and the way round, a graph OpenVINO cannot read."""
    found = custom_ops(onnx_path)
    if not found:
        return
    lines = [f'{op} (x{count}): {UNSUPPORTED_OP_ADVICE.get(op, _GENERIC_ADVICE)}'
             for op, count in found.items()]
    raise OpenVINOUnsupportedOpError(
        f'OpenVINO cannot convert {len(found)} op type(s) of {onnx_path}:\n  ' + '\n  '.join(lines))


def read_model(onnx_path: str):
    """The ``openvino.Model`` of an ONNX file, after :func:`check_readable`."""
    if not os.path.isfile(onnx_path):
        raise FileNotFoundError(f'no ONNX file at {onnx_path}')
    check_readable(onnx_path)
    return _core().read_model(onnx_path)


def cpu_float_precisions() -> List[str]:
    """Float inference precisions the CPU runs natively (``f32``, plus ``bf16`` with AMX/AVX512-BF16)."""
    capabilities = _core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')
    return ['f32'] + (['bf16'] if 'BF16' in capabilities else [])


def default_precision() -> str:
    """OpenVINO's default CPU inference precision here: the fastest float type (``bf16`` or ``f32``)."""
    return _precision_name(_core().get_property('CPU', 'INFERENCE_PRECISION_HINT'))


def _precision_name(element_type) -> str:
    name = str(getattr(element_type, 'get_type_name', lambda: element_type)())
    return {'bfloat16': 'bf16', 'float32': 'f32', 'f32': 'f32', 'bf16': 'bf16',
            'float16': 'f16', 'f16': 'f16'}.get(name, name)


def _check_precision(precision: Optional[str]) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise OpenVINOError(f'unknown OpenVINO precision {precision!r}; choose one of '
                            f'{", ".join(PRECISIONS)}')
    if precision == 'bf16' and 'bf16' not in cpu_float_precisions():
        raise OpenVINOError('precision bf16 asked, but this CPU has no bf16 instructions '
                            '(AMX or AVX512-BF16); OpenVINO would emulate it slowly: use f32')


class OpenVINOModel:
    """A model compiled for the CPU that runs numpy inputs.

    Args:
        model: an ``openvino.Model`` (from :func:`read_model` or :func:`quantize`).
        precision: float inference precision ``'f32'`` / ``'bf16'``; None for
            OpenVINO's default (the CPU's fastest). For a quantized model it
            applies to the ops left in float.
        threads: inference threads (one stream, latency mode).
    """

    def __init__(self, model, precision: Optional[str] = None, threads: int = 1,
                 quantized: bool = False):
        if precision == 'int8':
            raise OpenVINOError("precision 'int8' needs calibration: use compile_onnx(..., 'int8', "
                                'calibration=...) or quantize() first')
        _check_precision(precision)
        if threads < 1:
            raise OpenVINOError(f'threads must be at least 1, got {threads}')
        config = {'INFERENCE_NUM_THREADS': int(threads), 'NUM_STREAMS': 1,
                  'PERFORMANCE_HINT': 'LATENCY'}
        if precision is not None:
            config['INFERENCE_PRECISION_HINT'] = precision
        self.model, self.threads, self.quantized = model, threads, quantized
        self.compiled = _core().compile_model(model, 'CPU', config)
        self.inference_precision = _precision_name(
            self.compiled.get_property('INFERENCE_PRECISION_HINT'))
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self._request = self.compiled.create_infer_request()

    @property
    def precision(self) -> str:
        """``int8`` for a quantized model, else the float inference precision."""
        return 'int8' if self.quantized else self.inference_precision

    def __call__(self, inputs: Union[Mapping[str, np.ndarray], np.ndarray]) -> List[np.ndarray]:
        """Run one inference; ``inputs`` by input name (or the one input's array)."""
        if not isinstance(inputs, Mapping):
            if len(self.input_names) != 1:
                raise OpenVINOError(f'the model has inputs {self.input_names}: pass a dict')
            inputs = {self.input_names[0]: inputs}
        unknown = set(inputs) - set(self.input_names)
        if unknown:
            raise OpenVINOError(f'unknown input(s) {sorted(unknown)}; the model takes '
                                f'{self.input_names}')
        self._request.infer({k: np.ascontiguousarray(v, dtype=np.float32)
                             for k, v in inputs.items()})
        return [self._request.get_output_tensor(i).data.copy()
                for i in range(len(self.output_names))]

    def save(self, xml_path: str) -> List[str]:
        """Write the model as OpenVINO IR (``.xml`` + ``.bin``, weights uncompressed)."""
        import openvino as ov
        if not xml_path.endswith('.xml'):
            raise OpenVINOError(f'an OpenVINO IR path ends with .xml, got {xml_path}')
        ov.save_model(self.model, xml_path, compress_to_fp16=False)
        return [xml_path, xml_path[:-4] + '.bin']


def quantize(model, calibration: Iterable, preset: str = DEFAULT_NNCF_PRESET,
             op_types: Sequence[str] = QUANTIZED_OP_TYPES, fast_bias_correction: bool = True):
    """NNCF post-training INT8 quantization of ``model``'s ``op_types`` inputs.

    Args:
        model: an ``openvino.Model`` (e.g. :func:`read_model`).
        calibration: inputs to calibrate on: dicts ``{input name: array}`` or
            arrays of the one input; every item is used (``subset_size``). A
            re-iterable sized object (a list, or
            :class:`~mmrep.deploy.calibration.PreprocessedInputs`, which reads
            images lazily) is iterated as it is; anything else is listed first.
        preset: NNCF's ``'performance'`` (symmetric activations) or ``'mixed'``
            (asymmetric activations).
        op_types: OpenVINO op types whose inputs are quantized; every other op
            stays in float.

    Returns:
        the quantized ``openvino.Model`` (FakeQuantize nodes inserted).
    """
    if preset not in NNCF_PRESETS:
        raise OpenVINOError(f'unknown NNCF preset {preset!r}; choose one of {", ".join(NNCF_PRESETS)}')
    items = calibration if hasattr(calibration, '__len__') else list(calibration)
    if not len(items):
        raise OpenVINOError('INT8 quantization needs at least one calibration input')
    problem = compat.nncf_unavailable()  # imports nncf (slow: only here)
    if problem:
        raise OpenVINOError(f'INT8 quantizes with NNCF, but {problem}')
    import nncf
    present = {op.get_type_name() for op in model.get_ordered_ops()}
    if not present & set(op_types):
        raise OpenVINOError(f'the model has no {"/".join(op_types)} op to quantize')
    ignored = sorted(present - set(op_types))
    # NNCF logs one INFO line per op it leaves in float: hundreds for a detector
    from nncf.common.logging import nncf_logger
    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)
    try:
        return nncf.quantize(
            model, nncf.Dataset(items), preset=getattr(nncf.QuantizationPreset, preset.upper()),
            subset_size=len(items), fast_bias_correction=fast_bias_correction,
            ignored_scope=nncf.IgnoredScope(types=ignored, validate=False))
    finally:
        nncf_logger.setLevel(level)


def quantized_op_count(model) -> Dict[str, int]:
    """How many ops of each type read a FakeQuantize output (what runs in int8).

    An op is counted once, whether its activation, its weight or both pass a
    FakeQuantize.
    """
    quantized = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == 'FakeQuantize':
            for target in op.output(0).get_target_inputs():
                node = target.get_node()
                quantized[node.get_friendly_name()] = node.get_type_name()
    return dict(sorted(Counter(quantized.values()).items()))


def compile_onnx(onnx_path: str, precision: Optional[str] = None, threads: int = 1,
                 calibration: Optional[Iterable] = None,
                 preset: str = DEFAULT_NNCF_PRESET) -> OpenVINOModel:
    """Read ``onnx_path`` and compile it at ``precision`` (``'int8'``: quantize on ``calibration``)."""
    _check_precision(precision)
    model = read_model(onnx_path)
    if precision != 'int8':
        return OpenVINOModel(model, precision, threads)
    if calibration is None:
        raise OpenVINOError("precision 'int8' needs calibration inputs")
    return OpenVINOModel(quantize(model, calibration, preset), None, threads, quantized=True)


class MMDeployWrapper(torch.nn.Module):
    """An :class:`OpenVINOModel` in the place of an mmdeploy backend wrapper.

    mmdeploy's task models (``End2EndModel`` of mmdet and mmseg) call
    ``self.wrapper({input name: tensor})`` and ``wrapper.output_to_list``;
    :func:`use_in_mmdeploy_model` puts this wrapper there, so that mmdeploy's
    own pre- and post-processing (box rescaling, mask pasting) runs around
    OpenVINO, exactly as around onnxruntime.
    """

    def __init__(self, model: OpenVINOModel):
        super().__init__()
        self.model = model
        self.output_names = list(model.output_names)

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        arrays = self.model({k: v.detach().cpu().numpy() for k, v in inputs.items()})
        return {name: torch.from_numpy(a) for name, a in zip(self.output_names, arrays)}

    def output_to_list(self, outputs: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        return [outputs[name] for name in self.output_names]


def use_in_mmdeploy_model(backend_model, model: OpenVINOModel):
    """Make an mmdeploy backend model (built for the same ONNX file) run ``model``; returns it."""
    wrapper = MMDeployWrapper(model)
    expected = list(getattr(backend_model.wrapper, 'output_names', wrapper.output_names))
    if expected != wrapper.output_names:
        raise OpenVINOError(f'the OpenVINO model has outputs {wrapper.output_names}, the mmdeploy '
                            f'model expects {expected}')
    backend_model.wrapper = wrapper
    return backend_model
