"""The verified ONNX export in OpenVINO: checked, compiled at a precision, timed and evaluated.

After :func:`~mmrep.deploy.pipeline.export_and_verify` has checked
``end2end.onnx`` in onnxruntime, :func:`openvino_and_measure`

1. reads it with OpenVINO (:mod:`mmrep.deploy.openvino`; custom ops are
   refused, naming the op and the way round), compiles it at f32 and compares
   it with the fused PyTorch model on the check image, with the same
   tolerances as onnxruntime: this checks OpenVINO's conversion;
2. compiles it at the asked precision: ``bf16`` (a compile-time hint), or
   ``int8`` (NNCF post-training quantization of the convolutions, calibrated
   on held-out images read through the config's test pipeline and data
   preprocessor, as the onnxruntime INT8 path does); ``None`` is OpenVINO's
   default, the fastest float precision of the CPU; compares it with the f32
   model on the check image (reported: the held-out evaluation judges it);
3. writes it as OpenVINO IR, ``end2end.xml`` + ``end2end.bin`` (for bf16 the
   IR holds the f32 weights: the precision is chosen when compiling);
4. times onnxruntime fp32 and OpenVINO on the same preprocessed check image
   with the same thread count;
5. with an evaluation split, evaluates the fused PyTorch model, OpenVINO f32
   and OpenVINO at the precision on the held-out images; the drop is f32 minus
   the precision, both in OpenVINO (same runtime), in points.
"""
from __future__ import annotations

import copy
import os.path as osp
import statistics
from typing import Optional

import numpy as np
import torch

from mmrep import compat
from mmrep.engine.measure import time_ms

from . import openvino as mov
from .calibration import HeldOutSplit, Int8InputError, PreprocessedInputs, onnx_input
from .compare import clip_to_image, compare_predictions
from .evaluation import evaluate_models

SUPPORTED_TASKS = ('ObjectDetection', 'Segmentation')
LABELS = dict(torch_fp32='PyTorch fp32 (fused)', fp32='OpenVINO f32', bf16='OpenVINO bf16',
              int8='OpenVINO INT8 (NNCF)')


def check_openvino_request(task: str, options: dict) -> None:
    """Refuse, before the export work, an OpenVINO run that cannot work."""
    import importlib.util
    missing = [name for name in ('openvino', 'nncf') if importlib.util.find_spec(name) is None
               and (name == 'openvino' or options.get('precision') == 'int8')]
    if missing:
        raise mov.OpenVINOError(f'--backend openvino needs {" and ".join(missing)}: '
                                "pip install 'mmrep[deploy]' (openvino==2026.4.1, nncf==3.4.0)")
    if options.get('precision') == 'int8':
        problem = compat.nncf_unavailable()
        if problem:
            raise mov.OpenVINOError(f'--precision int8 quantizes with NNCF, but {problem}. Use '
                                    '--precision bf16 or f32, or onnxruntime INT8 (--int8)')
    precision = options.get('precision')
    mov._check_precision(precision)
    if options.get('preset', mov.DEFAULT_NNCF_PRESET) not in mov.NNCF_PRESETS:
        raise Int8InputError(f'--calib-method for OpenVINO is an NNCF preset, one of '
                             f'{", ".join(mov.NNCF_PRESETS)}; got {options.get("preset")!r}')
    if precision == 'int8' and task not in SUPPORTED_TASKS:
        raise Int8InputError(f'--precision int8 supports the mmdeploy tasks '
                             f'{", ".join(SUPPORTED_TASKS)}; the deploy config has task {task!r}')


def _run_logits(threads: int):
    def run(path: str, inputs: np.ndarray) -> np.ndarray:
        return mov.compile_onnx(path, 'f32', threads)(inputs)[0]
    return run


def openvino_and_measure(processor, cfg, onnx_path: str, work_dir: str, task: str,
                         check_data: dict, torch_model, torch_prediction,
                         split: Optional[HeldOutSplit], precision: Optional[str] = None,
                         preset: str = mov.DEFAULT_NNCF_PRESET, threads: int = 1,
                         repeats: int = 20, top_k: int = 20, tolerances: Optional[dict] = None,
                         max_drop: Optional[float] = None) -> dict:
    """Compile ``onnx_path`` in OpenVINO at ``precision`` and measure it.

    Args:
        processor: the mmdeploy task processor of the fused config.
        cfg: the model config (its evaluator is used).
        onnx_path: the verified fp32 export (onnxruntime-style graph).
        work_dir: where ``end2end.xml``/``.bin`` are written.
        task: the mmdeploy task type.
        check_data: the check image (``processor.create_input``).
        torch_model: the fused PyTorch model; ``torch_prediction`` its data
            sample on the check image.
        split: calibration images (for int8) and evaluation images, disjoint;
            None: no calibration, no evaluation.
        precision: ``'f32'``, ``'bf16'``, ``'int8'``; None for OpenVINO's default.
        preset: NNCF preset for int8 (``'performance'`` or ``'mixed'``).
        threads: inference threads of both runtimes for the latency figures.
        tolerances: PyTorch/OpenVINO f32 disagreement accepted on the check image
            (``mmrep.deploy.pipeline.TOLERANCES``).
        max_drop: points the precision may lose against f32 (None: no floor).

    Returns:
        the report's ``openvino`` section; ``errors`` is empty when OpenVINO
        f32 agrees with PyTorch and the precision stays within ``max_drop``.
    """
    from .pipeline import TOLERANCES, compare_with_torch, verdict
    from .quantize import cpu_session
    tol = dict(TOLERANCES, **(tolerances or {}))
    requested = precision
    if precision is None:
        precision = mov.default_precision()
        print(f'OpenVINO precision: {precision} (OpenVINO\'s default on this CPU; '
              '--precision f32|bf16|int8 chooses)', flush=True)
    input_name, _ = onnx_input(onnx_path)

    def preprocess(batch):
        return torch_model.data_preprocessor(copy.deepcopy(batch), False)['inputs']

    def backend(model):
        return mov.use_in_mmdeploy_model(processor.build_backend_model([onnx_path]), model)

    ov_model = mov.read_model(onnx_path)
    f32 = backend(mov.OpenVINOModel(ov_model, 'f32', threads))
    with torch.no_grad():
        f32_prediction = f32.test_step(copy.deepcopy(check_data))[0]
    clip_to_image(f32_prediction)
    section = dict(precision=precision, requested_precision=requested, threads=threads)
    section['agreement_f32_with_torch'] = compare_with_torch(
        task, torch_model, torch_prediction, f32_prediction, onnx_path, check_data, top_k,
        run_onnx=_run_logits(threads))
    errors = verdict(task, section['agreement_f32_with_torch'], tol, backend='OpenVINO f32')

    if precision == 'f32':
        chosen = f32
    elif precision == 'int8':
        calibration = PreprocessedInputs(split.calibration, preprocess, input_name)
        print(f'OpenVINO INT8: calibrating (NNCF preset {preset}) on '
              f'{len(split.calibration_ids)} {split.calibration_source} images', flush=True)
        quantized = mov.quantize(ov_model, calibration, preset)
        chosen = backend(mov.OpenVINOModel(quantized, None, threads, quantized=True))
        section.update(nncf_preset=preset, quantized_ops=mov.quantized_op_count(quantized))
        if not section['quantized_ops']:
            errors.append('NNCF quantized no convolution')
    else:
        chosen = backend(mov.OpenVINOModel(ov_model, precision, threads))
    compiled = chosen.wrapper.model
    section['inference_precision'] = compiled.inference_precision
    if precision != 'f32':
        with torch.no_grad():
            lowered = chosen.test_step(copy.deepcopy(check_data))[0]
        clip_to_image(lowered)
        section[f'agreement_{precision}_with_f32'] = compare_predictions(
            task, f32_prediction, lowered, top_k)
    section['xml'], section['bin'] = compiled.save(
        osp.join(work_dir, osp.splitext(osp.basename(onnx_path))[0] + '.xml'))

    feed = {input_name: preprocess(check_data).numpy().astype(np.float32)}
    session = cpu_session(onnx_path, threads)
    warmup = 3 if repeats >= 10 else 1
    section['latency_ms_ort_fp32'] = statistics.median(
        time_ms(lambda: session.run(None, feed), repeats, warmup))
    section['latency_ms_openvino'] = statistics.median(
        time_ms(lambda: compiled(feed), repeats, warmup))
    section.update(latency_threads=threads, latency_repeats=repeats,
                   latency_input_shape=list(feed[input_name].shape),
                   speedup_vs_ort_fp32=section['latency_ms_ort_fp32'] / section['latency_ms_openvino'])

    if split is not None:
        section.update(split.report())
    if split is not None and split.evaluation is not None:
        models = dict(torch_fp32=torch_model, fp32=f32)
        if precision != 'f32':
            models[precision] = chosen
        errors += evaluate_models(
            section, cfg, split, task,
            task != 'Segmentation' and 'masks' in torch_prediction.pred_instances, models, LABELS,
            'fp32', precision if precision != 'f32' else 'fp32', max_drop)
    section['errors'] = errors
    return section
