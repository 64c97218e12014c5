"""The inference paths the benchmark times, each as a runner that takes no arguments.

Paths (names as in ``benchmark.json``):

* ``unfused``: the training-time multi-branch model, eval mode, torch NCHW;
* ``fused``: after fusing (mmrep's :func:`~mmrep.reparameterize_model`; a timm
  twin's own ``reparameterize_model``; a stock model as it is), torch NCHW;
* ``fused_channels_last``: the fused model in channels_last (the layout
  mmrep's tools pick on the CPU, :mod:`mmrep.engine.fast_path`);
* ``plain_limit`` / ``plain_limit_channels_last``: the fused model's convs and
  their activations only (:class:`~mmrep.benchmark.limit.PlainLimit`);
* ``onnxruntime``: the fused model exported to ONNX (opset 17), onnxruntime fp32;
* ``onnxruntime_int8``: that ONNX model statically quantized (QDQ, per-channel
  int8 weights, uint8 activations) on random inputs: a speed figure, not an
  accuracy one (``tools/deploy.py --int8 --eval`` measures accuracy);
* ``openvino``: the same ONNX model compiled by OpenVINO at its default
  precision for the CPU (bf16 where the CPU has AMX; the row records the
  precision OpenVINO chose);
* ``openvino_int8``: the ONNX model quantized by NNCF (on random inputs, as above)
  and compiled by OpenVINO.

Every path of a model starts from the same fused network and the same inputs.
"""
from __future__ import annotations

import copy
import logging
import os.path as osp
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import nn

from mmrep import compat

from .limit import PlainLimit
from .models import Case

TORCH_PATHS = ('unfused', 'fused', 'fused_channels_last', 'plain_limit',
               'plain_limit_channels_last')
ONNXRUNTIME_PATHS = ('onnxruntime', 'onnxruntime_int8')
OPENVINO_PATHS = ('openvino', 'openvino_int8')
ALL_PATHS = TORCH_PATHS + ONNXRUNTIME_PATHS + OPENVINO_PATHS
# what a peer (timm twin, stock model) runs: the same runtimes as the fused model
PEER_PATHS = ('fused', 'fused_channels_last') + ONNXRUNTIME_PATHS + OPENVINO_PATHS
INT8_CALIBRATION_SAMPLES = 4


@dataclass
class PathRunner:
    """One path of one model: ``call()`` runs one inference."""
    call: Callable[[], Any]
    info: Dict[str, Any] = field(default_factory=dict)  # goes into the row


class PathError(RuntimeError):
    """A path that cannot run for this model (its row records why)."""


class _AdaptiveAvgPoolExact(nn.Module):
    """``nn.AdaptiveAvgPool2d`` written so that any input size exports exactly
    (:func:`mmrep.deploy.rewriters.exact_adaptive_avg_pool2d`)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        from mmrep.deploy.rewriters import exact_adaptive_avg_pool2d
        return exact_adaptive_avg_pool2d(x, self.output_size)


def export_onnx(module: nn.Module, inputs: Sequence[torch.Tensor], path: str) -> str:
    """``module(*inputs)`` to ONNX (opset 17, TorchScript exporter, static shapes).

    Inputs are named ``input0``, ``input1``, ... Adaptive average pooling is
    rewritten exactly (the exporter takes it only when sizes divide).
    """
    names = [f'input{i}' for i in range(len(inputs))]
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(parent, name, _AdaptiveAvgPoolExact(child.output_size))
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer's notes on shape checks in forward(): static shapes are what we export
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        torch.onnx.export(module, tuple(inputs), path, opset_version=17, input_names=names,
                          do_constant_folding=True, **compat.torchscript_onnx_export_kwargs())
    return path


def onnx_feeds(onnx_path: str, inputs: Sequence[torch.Tensor]) -> Dict[str, Any]:
    """numpy feeds for the graph's inputs (the exporter drops inputs the graph does not
    use, e.g. RepPAFPN's first feature map with ``start_level=1``)."""
    import onnx
    used = {i.name for i in onnx.load(onnx_path, load_external_data=False).graph.input}
    return {f'input{i}': t.numpy() for i, t in enumerate(inputs) if f'input{i}' in used}


def random_feeds(onnx_path: str, inputs: Sequence[torch.Tensor], samples: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [onnx_feeds(onnx_path, [torch.rand(t.shape, generator=generator) for t in inputs])
            for _ in range(samples)]


def quantize_onnx_random(fp32_path: str, inputs: Sequence[torch.Tensor], path: str,
                         samples: int = INT8_CALIBRATION_SAMPLES) -> str:
    """onnxruntime QDQ INT8 of every op type it quantizes, calibrated on random inputs."""
    from mmrep.deploy.quantize import quantize_onnx

    class RandomInputs:  # an onnxruntime CalibrationDataReader
        def __init__(self):
            self.feeds = iter(random_feeds(fp32_path, inputs, samples))

        def get_next(self):
            return next(self.feeds, None)

    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # one warning per conv bias otherwise
    try:
        quantize_onnx(fp32_path, path, RandomInputs(), op_types=None)
    finally:
        root_logger.setLevel(level)
    return path


def _params_m(module: nn.Module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 3)


class PathBuilder:
    """Makes the runners of one case, sharing the fused model and the exported files.

    ``artifacts`` (``{'onnx': path, ...}``) are files made before (by the
    parent process, for the memory child): they are used instead of exporting again.
    ``in_place``: fuse and change the layout of ``case.model`` itself instead of
    copies (for one path only: the memory child holds no second model).
    """

    def __init__(self, case: Case, threads: int, work_dir: str,
                 artifacts: Optional[Dict[str, str]] = None, in_place: bool = False):
        self.case, self.threads, self.work_dir = case, threads, work_dir
        self._copy = (lambda m: m) if in_place else copy.deepcopy
        self.artifacts = dict(artifacts or {})
        self.prefix = osp.join(work_dir, ''.join(c if c.isalnum() else '_'
                                                 for c in case.spec.name).strip('_'))
        self._fused: Optional[nn.Module] = None
        self.fusion_ms: Optional[float] = None
        self.nothing_to_fuse = False

    # ---- shared pieces
    def fused(self) -> nn.Module:
        """The fused network (NCHW), made once."""
        if self._fused is None:
            from mmrep.reparam import count_unfused
            model = self.case.model
            if not self.case.already_fused:
                model = self._copy(model)
                self.nothing_to_fuse = (not self.case.spec.reference
                                        and self.case.spec.kind != 'timm'
                                        and count_unfused(model) == 0)
                start = time.perf_counter()
                model = self.case.fuse(model)
                self.fusion_ms = round((time.perf_counter() - start) * 1000, 1)
            self._fused = model.eval()
        return self._fused

    def _fused_info(self) -> dict:
        from mmrep.engine.fast_path import rule_memory_format
        fused = self.fused()
        info = dict(params_m=_params_m(fused), fast_path=rule_memory_format(fused))
        if self.fusion_ms is not None and not self.case.spec.reference:
            info['fusion_ms'] = self.fusion_ms
        return info

    def onnx(self) -> str:
        if 'onnx' not in self.artifacts:
            path = self.prefix + '.onnx'
            try:
                export_onnx(self.fused(), self.case.inputs, path)
            except Exception as error:
                raise PathError(f'ONNX export failed: {type(error).__name__}: {error}') from error
            self.artifacts['onnx'] = path
        return self.artifacts['onnx']

    def onnx_int8(self) -> str:
        if 'onnx_int8' not in self.artifacts:
            path = self.prefix + '_int8.onnx'
            try:
                quantize_onnx_random(self.onnx(), self.case.inputs, path)
            except PathError:
                raise
            except Exception as error:
                raise PathError(f'INT8 quantization failed: {type(error).__name__}: '
                                f'{error}') from error
            self.artifacts['onnx_int8'] = path
        return self.artifacts['onnx_int8']

    def openvino_int8(self) -> str:
        """The ONNX model quantized by NNCF (random calibration inputs), saved as IR."""
        if 'openvino_int8' not in self.artifacts:
            from mmrep.deploy.openvino import compile_onnx
            onnx_path = self.onnx()
            path = self.prefix + '_openvino_int8.xml'
            feeds = random_feeds(onnx_path, self.case.inputs, INT8_CALIBRATION_SAMPLES)
            try:
                compile_onnx(onnx_path, 'int8', self.threads, calibration=feeds).save(path)
            except Exception as error:
                raise PathError(f'NNCF INT8 quantization failed: {type(error).__name__}: '
                                f'{error}') from error
            self.artifacts['openvino_int8'] = path
        return self.artifacts['openvino_int8']

    def _openvino_model(self, path: str):
        from mmrep.deploy import openvino as backend
        if path == 'openvino':  # OpenVINO's default: the CPU's fastest float precision
            return backend.compile_onnx(self.onnx(), None, self.threads)
        import openvino
        quantized = openvino.Core().read_model(self.openvino_int8())
        return backend.OpenVINOModel(quantized, None, self.threads, quantized=True)

    # ---- runners
    def runner(self, path: str) -> PathRunner:
        """The runner of ``path``; :class:`PathError` when it cannot run for this model."""
        inputs = self.case.inputs
        if path == 'unfused':
            if self.case.already_fused:
                raise PathError('the checkpoint is fused: there is no unfused model')
            model = self.case.model
            return PathRunner(lambda: model(*inputs), dict(params_m=_params_m(model)))
        if path in ('fused', 'fused_channels_last'):
            model = self.fused()
            info = self._fused_info()
            if path == 'fused_channels_last':
                from mmrep.engine.fast_path import apply_memory_format
                model = apply_memory_format(self._copy(model), 'channels_last')
            return PathRunner(lambda: model(*inputs), info)
        if path in ('plain_limit', 'plain_limit_channels_last'):
            model = self.fused()
            if path == 'plain_limit_channels_last':
                from mmrep.engine.fast_path import apply_memory_format
                model = apply_memory_format(self._copy(model), 'channels_last')
            limit = PlainLimit(model, inputs)
            return PathRunner(limit, dict(convs=limit.convs,
                                      activations=sum(limit.activations().values())))
        if path in ONNXRUNTIME_PATHS:
            from mmrep.deploy.quantize import cpu_session
            onnx_path = self.onnx() if path == 'onnxruntime' else self.onnx_int8()
            session = cpu_session(onnx_path, self.threads)
            feeds = onnx_feeds(onnx_path, inputs)
            return PathRunner(lambda: session.run(None, feeds))
        if path in OPENVINO_PATHS:
            model = self._openvino_model(path)
            feeds = onnx_feeds(self.onnx(), inputs)
            return PathRunner(lambda: model(feeds), dict(
                precision=model.precision, inference_precision=model.inference_precision))
        raise ValueError(f'unknown path {path!r}; choose from {ALL_PATHS}')


def build_runners(builder: PathBuilder, paths: Sequence[str]) -> Dict[str, Any]:
    """``{path: PathRunner or error message}``: a path that cannot run does not stop others."""
    runners: Dict[str, Any] = {}
    for path in paths:
        try:
            runners[path] = builder.runner(path)
        except PathError as error:
            runners[path] = str(error)[:500]
        except Exception as error:  # reported in the row, never fatal for the run
            runners[path] = f'{type(error).__name__}: {error}'[:500]
    return runners
