"""CPU latency and peak memory of mmrep's models on every inference path, against their limits.

    python tools/benchmark.py [--models NAME ...] [--paths PATH ...] [--batch 1 8]
                              [--size H W] [--detector-size H W] [--out DIR]

Writes ``DIR/benchmark.json`` (a list of rows: ``model``, ``path``, ``batch``,
``input``, ``median_ms``, ``min_ms``, ``repeats``, ``peak_mb``, ... and
``error`` where a path failed), ``DIR/benchmark.png`` (latency per model and
path), ``DIR/benchmark.md`` (the same as a table) and ``DIR/command.txt``
(the exact command, versions, threads and machine load).

Paths (``--paths``):

* ``unfused``: the training-time multi-branch model, eval mode, NCHW;
* ``fused``: after :func:`mmrep.reparameterize_model`, NCHW (``fusion_ms``
  on this row is how long fusing took);
* ``fused_channels_last``: the fused model in channels_last;
* ``plain_limit`` / ``plain_limit_channels_last``: the limit, a hand-built
  plain network made of the fused model's convolutions (same shapes, same
  order, each followed by an in-place ReLU) and nothing else; a fused model
  cannot be faster than it;
* ``onnxruntime``: the fused model exported with ``torch.onnx`` (opset 17) and
  run in onnxruntime (fp32, all graph optimizations);
* ``onnxruntime_int8``: that ONNX model statically quantized (QDQ, per-channel
  int8 weights, uint8 activations; calibrated on a few random inputs, so this
  row is about speed, not accuracy).

Denormal floats are flushed to zero (``torch.set_flush_denormal``): the
plain limit's chain of randomly initialised convs decays into denormals,
which x86 CPUs compute many times slower. Every fused row also says which layout the project's tools pick
(``fast_path``, :mod:`mmrep.engine.fast_path`). Whole models (detectors,
segmentors) are timed as networks (``mode='tensor'``: backbone, neck and
head; no box decoding or NMS). Models with a timm twin (``RepVGG-A0``,
``RepVGG-B1g4``, ``RepGhostNet-1.0x``) get extra rows ``<name> (timm)``:
timm's model with random weights, fused by ``timm.utils.reparameterize_model``,
``forward_features``. Peak memory: see :mod:`mmrep.engine.measure`.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import os.path as osp
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import mmrep
from mmrep import compat
from mmrep.deploy.quantize import cpu_session, quantize_onnx
from mmrep.deploy.rewriters import exact_adaptive_avg_pool2d
from mmrep.engine.fast_path import apply_memory_format, rule_memory_format
from mmrep.engine.measure import PeakRSS, time_ms

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(ROOT, 'configs')

ALL_PATHS = ('unfused', 'fused', 'fused_channels_last', 'plain_limit', 'plain_limit_channels_last',
             'onnxruntime', 'onnxruntime_int8')
REFERENCE_PATHS = ('fused', 'fused_channels_last', 'onnxruntime', 'onnxruntime_int8')
FUSED_TORCH_PATHS = ('fused', 'fused_channels_last', 'plain_limit', 'plain_limit_channels_last')

# RepPAFPN on its own: the neck of configs/retinanet_repghost_reppafpn_1x.py
# fed RepGhostNet-1.0x's feature maps (strides 4/8/16/32) of an H x W image.
NECK_CONFIG = 'retinanet_repghost_reppafpn_1x.py'
NECK_STRIDES = (4, 8, 16, 32)

REPPAFPN_NECK = dict(type='RepPAFPN', in_channels=[48, 96, 192, 1280], out_channels=256,
                     start_level=1, add_extra_convs='on_input', num_outs=5)


def _backbone(type_name: str, **kwargs) -> Callable[[], nn.Module]:
    def build():
        from mmdet.registry import MODELS
        return MODELS.build(dict(type=type_name, **kwargs))
    return build


# name -> kind, how to build, timm twin; whole models name their config
# (and changes to it) and are run at its test size unless --detector-size.
MODELS: Dict[str, dict] = {
    'RepVGG-A0': dict(kind='backbone', build=_backbone('RepVGG', arch='A0'), timm='repvgg_a0'),
    'RepVGG-B1g4': dict(kind='backbone', build=_backbone('RepVGG', arch='B1g4'),
                        timm='repvgg_b1g4'),
    'RepGhostNet-1.0x': dict(kind='backbone', build=_backbone('RepGhostNet', widen_factor=1.0),
                             timm='repghostnet_100'),
    'OREPA-ResNet-18': dict(kind='backbone', build=_backbone('OREPAResNet', depth=18)),
    'OREPA-ResNet-50': dict(kind='backbone', build=_backbone('OREPAResNet', depth=50)),
    'RepLKNet-31B': dict(kind='backbone', build=_backbone('RepLKNet', arch='31B')),
    'RepPAFPN': dict(kind='neck', config=NECK_CONFIG),
    'RetinaNet-RepGhost': dict(kind='detector', config='retinanet_repghost_1x.py'),
    'RetinaNet-RepVGG-A0+RepPAFPN': dict(kind='detector', config='retinanet_repvgg-a0_1x.py',
                                         changes=dict(neck=REPPAFPN_NECK)),
    'UPerNet-RepLKNet-31B': dict(kind='segmentor', config='upernet_replknet-31b_ade20k.py'),
    'RetinaNet-R18 (mmdet)': dict(kind='detector', reference=True,
                                  config='mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'),
    'RetinaNet-R50 (mmdet)': dict(kind='detector', reference=True,
                                  config='mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'),
    # the speed-built config and its stock reference, both as trained on the shapes data
    'RetinaNet-RepVGG-A0-slim (shapes)': dict(
        kind='detector', config='retinanet_repvgg-a0_reppafpn-slim_shapes.py'),
    'RetinaNet-R18 (shapes)': dict(kind='detector', reference=True,
                                   config='retinanet_r18_shapes_baseline.py'),
}
DEFAULT_MODELS = [name for name in MODELS]


class _Flatten(nn.Module):
    """``module(*inputs)`` returning a flat tuple of tensors (what ONNX export wants)."""

    def __init__(self, module: nn.Module, call: Callable):
        super().__init__()
        self.module = module
        self._call = call

    def forward(self, *inputs):
        return tuple(_flat(self._call(self.module, *inputs)))


def _flat(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for item in out for t in _flat(item)]


def _load_config(spec: dict):
    from mmengine.config import Config
    from mmengine.hub import get_config
    path = spec['config']
    cfg = get_config(path) if '::' in path else Config.fromfile(osp.join(CONFIGS, path))
    if spec.get('changes'):
        cfg.merge_from_dict({f'model.{k}': v for k, v in spec['changes'].items()})
    return cfg


def _config_test_size(cfg) -> Tuple[int, int]:
    """Square input at the short side of the test pipeline's Resize scale."""
    pipeline = cfg.test_dataloader.dataset.pipeline
    for step in pipeline:
        if step['type'] == 'Resize':
            scale = step['scale']
            side = min(scale) if step.get('keep_ratio', False) else None
            return (side, side) if side else (scale[1], scale[0])
    raise ValueError(f'no Resize in the test pipeline of {cfg.filename}')


def _build_from_config(cfg) -> nn.Module:
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS as ROOT_MODELS, init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = ROOT_MODELS.build(copy.deepcopy(cfg.model))  # no init_weights(): nothing downloaded
    return revert_sync_batchnorm(model).eval()


def build_case(name: str, batch: int, size: Tuple[int, int],
               detector_size: Optional[Tuple[int, int]]) -> Tuple[nn.Module, tuple]:
    """The model ``name`` as ``module(*inputs) -> tuple of tensors`` and its inputs."""
    spec = MODELS[name]
    torch.manual_seed(0)
    if spec['kind'] == 'backbone':
        return (_Flatten(spec['build']().eval(), lambda m, x: m(x)),
                (torch.rand(batch, 3, *size),))
    cfg = _load_config(spec)
    if spec['kind'] == 'neck':
        neck = _build_from_config(cfg).neck
        feats = tuple(torch.rand(batch, c, size[0] // s, size[1] // s)
                      for c, s in zip(neck.in_channels, NECK_STRIDES))
        return _Flatten(neck, lambda m, *f: m(f)), feats
    h, w = detector_size or _config_test_size(cfg)
    model = _build_from_config(cfg)
    return (_Flatten(model, lambda m, x: m(x, mode='tensor')),
            (torch.rand(batch, 3, h, w),))


def build_timm_twin(timm_name: str) -> nn.Module:
    import timm
    from timm.utils.model import reparameterize_model as timm_reparameterize
    model = timm.create_model(timm_name, pretrained=False).eval()
    return _Flatten(timm_reparameterize(model), lambda m, x: m.forward_features(x))


class PlainLimit(nn.Module):
    """The fused model's convs (same shapes, same order), each + in-place ReLU, and nothing else.

    Convs run one after the other; where a conv's recorded input shape is not
    the previous conv's output (branches, concatenations, pooling), it reads a
    preallocated tensor of the right shape instead. No other op runs, so a
    fused network doing the same convs cannot be faster.
    """

    def __init__(self, model: nn.Module, inputs: tuple):
        super().__init__()
        records = []
        hooks = [m.register_forward_pre_hook(lambda m, a: records.append((m, a[0].shape)))
                 for m in model.modules() if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            model(*inputs)
        for hook in hooks:
            hook.remove()
        self.convs = nn.ModuleList(copy.deepcopy(m) for m, _ in records)
        self.shapes = [tuple(shape) for _, shape in records]
        self.feeds = {}
        previous = tuple(inputs[0].shape)
        for i, (conv, shape) in enumerate(zip(self.convs, self.shapes)):
            if shape != previous:
                self.feeds[i] = torch.rand(shape)
            with torch.no_grad():
                previous = tuple(conv(torch.empty(shape, device='meta')).shape)
        self.inputs = inputs

    def to_memory_format(self, memory_format: torch.memory_format) -> 'PlainLimit':
        self.to(memory_format=memory_format)
        self.feeds = {i: t.contiguous(memory_format=memory_format) for i, t in self.feeds.items()}
        self.inputs = tuple(t.contiguous(memory_format=memory_format) for t in self.inputs)
        return self

    def forward(self) -> torch.Tensor:
        x = self.inputs[0]
        for i, conv in enumerate(self.convs):
            x = torch.relu_(conv(self.feeds.get(i, x)))
        return x


class _AdaptiveAvgPoolAsMatMul(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as ``P_h @ x @ P_w^T`` (AvgPool where sizes divide): exact,
    and exportable for any sizes (:func:`mmrep.deploy.rewriters.exact_adaptive_avg_pool2d`).

    The ONNX exporter takes adaptive pooling only when the output size divides
    the input size (UPerNet's pyramid pooling 1/2/3/6 at 512x512 does not).
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return exact_adaptive_avg_pool2d(x, self.output_size)


def export_onnx(module: nn.Module, inputs: tuple, path: str) -> str:
    names = [f'input{i}' for i in range(len(inputs))]
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(parent, name, _AdaptiveAvgPoolAsMatMul(child.output_size))
    with torch.no_grad():
        torch.onnx.export(module, inputs, path, opset_version=17, input_names=names,
                          do_constant_folding=True, **compat.torchscript_onnx_export_kwargs())
    return path


def quantize_int8(fp32_path: str, inputs: tuple, path: str, samples: int = 4) -> str:
    """Static QDQ quantization of every op type onnxruntime quantizes (per-channel
    weights), calibrated on random inputs like ``inputs``."""

    class RandomInputs:  # an onnxruntime CalibrationDataReader
        def __init__(self):
            self.feeds = iter([_feeds(fp32_path, tuple(torch.rand_like(t) for t in inputs))
                               for _ in range(samples)])

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


def _feeds(onnx_path: str, inputs: tuple) -> dict:
    # the exporter drops inputs the graph does not use (RepPAFPN with start_level 1)
    import onnx
    used = {i.name for i in onnx.load(onnx_path, load_external_data=False).graph.input}
    return {f'input{i}': t.numpy() for i, t in enumerate(inputs) if f'input{i}' in used}


def ort_runner(path: str, inputs: tuple, threads: int) -> Callable[[], object]:
    session = cpu_session(path, threads)  # all graph optimizations (onnxruntime's default)
    feeds = _feeds(path, inputs)
    return lambda: session.run(None, feeds)


def measure(run: Callable[[], object], args) -> dict:
    """Latency (after one warm-up call) and the peak RSS growth of warm-up and timed calls."""
    with torch.no_grad(), PeakRSS() as peak:
        times = time_ms(run, args.repeats, warmup=1, max_seconds=args.max_seconds)
    return dict(median_ms=round(statistics.median(times), 3), min_ms=round(min(times), 3),
                repeats=len(times), peak_mb=None if peak.mb is None else round(peak.mb, 1))


def _params_m(module: nn.Module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 3)


def bench_model(name: str, batch: int, args, work_dir: str) -> List[dict]:
    spec = MODELS[name]
    reference = spec.get('reference', False)
    paths = [p for p in args.paths if not reference or p in REFERENCE_PATHS]
    model, inputs = build_case(name, batch, tuple(args.size),
                               tuple(args.detector_size) if args.detector_size else None)
    image = list(args.size) if spec['kind'] == 'neck' else list(inputs[0].shape[2:])
    base = dict(model=name, kind=spec['kind'], batch=batch, input=list(inputs[0].shape),
                image=image,  # a neck's input: the feature maps of an image this size
                threads=args.threads, flush_denormal=True)
    rows = []

    def record(path, run_or_error, **extra):
        row = dict(base, path=path, **extra)
        if isinstance(run_or_error, str):
            row['error'] = run_or_error
        else:
            try:
                row.update(measure(run_or_error, args))
            except Exception as error:  # a path that fails is reported, not fatal
                row['error'] = f'{type(error).__name__}: {error}'[:500]
        if 'error' in row:
            print(f'  {name:34} b{batch} {path:26} FAILED: {row["error"][:200]}', flush=True)
        else:
            print(f'  {name:34} b{batch} {path:26} {row["median_ms"]:10.2f} ms  '
                  f'peak {row["peak_mb"]} MB', flush=True)
        rows.append(row)

    if 'unfused' in paths:
        record('unfused', lambda: model(*inputs), params_m=_params_m(model))
    fused = copy.deepcopy(model)
    start = time.perf_counter()
    mmrep.reparameterize_model(fused, inplace=True)
    fusion_ms = round((time.perf_counter() - start) * 1000, 1)
    del model
    fast_path = rule_memory_format(fused)
    fused_info = dict(params_m=_params_m(fused), fast_path=fast_path)
    if not reference:
        fused_info['fusion_ms'] = fusion_ms
    if 'fused' in paths:
        record('fused', lambda: fused(*inputs), **fused_info)
    limit = PlainLimit(fused, inputs) if any(p.startswith('plain_limit') for p in paths) else None
    if 'plain_limit' in paths:
        record('plain_limit', limit, convs=len(limit.convs))
    onnx_path = osp.join(work_dir, f'{_slug(name)}_b{batch}.onnx')
    onnx_error = None
    if any(p.startswith('onnxruntime') for p in paths):
        try:
            export_onnx(fused, inputs, onnx_path)
        except Exception as error:
            onnx_error = f'ONNX export failed: {type(error).__name__}: {error}'[:500]
    if 'onnxruntime' in paths:
        record('onnxruntime', onnx_error or ort_runner(onnx_path, inputs, args.threads))
    if 'onnxruntime_int8' in paths:
        int8_path = onnx_path.replace('.onnx', '_int8.onnx')
        try:
            run = onnx_error or ort_runner(quantize_int8(onnx_path, inputs, int8_path), inputs,
                                           args.threads)
        except Exception as error:
            run = f'INT8 quantization failed: {type(error).__name__}: {error}'[:500]
        record('onnxruntime_int8', run)
    if 'fused_channels_last' in paths:
        apply_memory_format(fused, 'channels_last')
        record('fused_channels_last', lambda: fused(*inputs), **fused_info)
    if 'plain_limit_channels_last' in paths:
        limit.to_memory_format(torch.channels_last)
        record('plain_limit_channels_last', limit, convs=len(limit.convs))

    if spec.get('timm') and not args.no_timm:
        rows += bench_timm(name, spec['timm'], inputs, base, args, work_dir)
    return rows


def bench_timm(name: str, timm_name: str, inputs: tuple, base: dict, args,
               work_dir: str) -> List[dict]:
    try:
        twin = build_timm_twin(timm_name)
    except ImportError as error:
        print(f'  no timm twin for {name}: {error}')
        return []
    rows = []
    base = dict(base, model=f'{name} (timm)', timm_model=timm_name, kind='timm')
    runs = {'fused': lambda: twin(*inputs)}
    if 'onnxruntime' in args.paths:
        path = export_onnx(twin, inputs, osp.join(work_dir, f'timm_{timm_name}.onnx'))
        runs['onnxruntime'] = ort_runner(path, inputs, args.threads)
    for path, run in runs.items():
        rows.append(dict(base, path=path, params_m=_params_m(twin), **measure(run, args)))
    if 'fused_channels_last' in args.paths:
        apply_memory_format(twin, 'channels_last')
        rows.append(dict(base, path='fused_channels_last', params_m=_params_m(twin),
                         **measure(lambda: twin(*inputs), args)))
    for row in rows:
        print(f'  {row["model"]:34} b{row["batch"]} {row["path"]:26} {row["median_ms"]:10.2f} ms  '
              f'peak {row["peak_mb"]} MB', flush=True)
    return rows


def _model_order(model: str) -> tuple:
    base = model.replace(' (timm)', '')  # a twin right after its model
    names = list(MODELS)
    return (names.index(base) if base in names else len(names), model)


def _key(row: dict) -> tuple:
    return row['model'], row['path'], row['batch'], tuple(row['input'])


def _slug(name: str) -> str:
    return ''.join(c if c.isalnum() else '_' for c in name).strip('_')


def write_markdown(rows: List[dict], path: str) -> str:
    """Median ms per model (rows) and path (columns), one table per batch size."""
    lines = []
    for batch in sorted({r['batch'] for r in rows}):
        sub = [r for r in rows if r['batch'] == batch]
        models = sorted(dict.fromkeys(r['model'] for r in sub), key=_model_order)
        paths = [p for p in ALL_PATHS if any(r['path'] == p for r in sub)]
        lines += [f'batch {batch}', '',
                  '| model | image | ' + ' | '.join(paths) + ' | fusion ms |',
                  '|---|---|' + '---|' * (len(paths) + 1)]
        for model in models:
            cells, fusion, shape = [], '', ''
            for p in paths:
                row = next((r for r in sub if r['model'] == model and r['path'] == p), None)
                if row is None:
                    cells.append('')
                    continue
                shape = 'x'.join(map(str, row.get('image', row['input'][2:])))
                fusion = row.get('fusion_ms', fusion) if p == 'fused' else fusion
                cells.append('failed' if 'error' in row else f"{row['median_ms']:.1f}")
            lines.append(f'| {model} | {shape} | ' + ' | '.join(cells) + f' | {fusion} |')
        lines.append('')
    text = '\n'.join(lines)
    with open(path, 'w') as f:
        f.write(text)
    return text


def _best(rows: List[dict], model: str, batch: int, paths: Sequence[str]) -> Optional[dict]:
    found = [r for r in rows if r['model'] == model and r['batch'] == batch
             and r['path'] in paths and 'error' not in r]
    return min(found, key=lambda r: r['median_ms']) if found else None


FUSED_PATHS = ('fused', 'fused_channels_last', 'onnxruntime', 'onnxruntime_int8')


def check_targets(rows: List[dict]) -> List[str]:
    """The issue's latency targets (#12), each met or not, with the measured figures."""
    lines = []

    def verdict(text, ok):
        lines.append(f'- {text}: **{"met" if ok else "not met"}**')

    for batch in sorted({r['batch'] for r in rows}):
        for path, limit_path in (('fused', 'plain_limit'),
                                 ('fused_channels_last', 'plain_limit_channels_last')):
            fused, limit = (_best(rows, 'RepVGG-A0', batch, [p]) for p in (path, limit_path))
            if fused and limit:
                ratio = fused['median_ms'] / limit['median_ms']
                verdict(f'b{batch} RepVGG-A0 `{path}` {fused["median_ms"]:.1f} ms vs its plain '
                        f'limit {limit["median_ms"]:.1f} ms: {100 * (ratio - 1):+.1f}% '
                        '(target within 3%)', ratio <= 1.03)
        for name in ('RepVGG-A0', 'RepVGG-B1g4', 'RepGhostNet-1.0x'):
            best = _best(rows, name, batch, FUSED_PATHS)
            timm = _best(rows, f'{name} (timm)', batch, ['fused'])
            if best and timm:
                speedup = timm['median_ms'] / best['median_ms']
                verdict(f'b{batch} {name} best fused path (`{best["path"]}`, '
                        f'{best["median_ms"]:.1f} ms) vs timm fused NCHW {timm["median_ms"]:.1f} '
                        f'ms: {speedup:.2f}x (target >= 1.5x)', speedup >= 1.5)
        nchw = _best(rows, 'RepLKNet-31B', batch, ['fused'])
        best = _best(rows, 'RepLKNet-31B', batch, FUSED_PATHS)
        if nchw and best:
            speedup = nchw['median_ms'] / best['median_ms']
            verdict(f'b{batch} RepLKNet-31B best fused path (`{best["path"]}`, '
                    f'{best["median_ms"]:.1f} ms) vs fused NCHW {nchw["median_ms"]:.1f} ms: '
                    f'{speedup:.2f}x (target >= 5x)', speedup >= 5)
        for runtime in ('fused_channels_last', 'onnxruntime', 'onnxruntime_int8'):
            fast = _best(rows, 'RetinaNet-RepVGG-A0-slim (shapes)', batch, [runtime])
            stock = _best(rows, 'RetinaNet-R18 (shapes)', batch, [runtime])
            if runtime == 'fused_channels_last' and fast:  # stock R18: its own best torch layout
                stock = _best(rows, 'RetinaNet-R18 (shapes)', batch,
                              ['fused', 'fused_channels_last'])
            if fast and stock:
                speedup = stock['median_ms'] / fast['median_ms']
                verdict(f'b{batch} speed-built RetinaNet vs stock RetinaNet-R18, `{runtime}`, '
                        f'{"x".join(map(str, fast["input"][2:]))}: {fast["median_ms"]:.1f} vs '
                        f'{stock["median_ms"]:.1f} ms, {speedup:.2f}x (target >= 2x)',
                        speedup >= 2)
    return lines


def plot(rows: List[dict], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    batches = sorted({r['batch'] for r in rows})
    fig, axes = plt.subplots(len(batches), 1, squeeze=False,
                             figsize=(10, 1.5 + 0.3 * len(rows) / len(batches)))
    for ax, batch in zip(axes[:, 0], batches):
        ok = [r for r in rows if r['batch'] == batch and 'error' not in r]
        models = sorted(dict.fromkeys(r['model'] for r in ok), key=_model_order)
        paths = [p for p in ALL_PATHS if any(r['path'] == p for r in ok)]
        height = 0.8 / max(len(paths), 1)
        for j, p in enumerate(paths):
            ys, xs = [], []
            for i, model in enumerate(models):
                row = next((r for r in ok if r['model'] == model and r['path'] == p), None)
                if row is not None:
                    ys.append(i + j * height)
                    xs.append(row['median_ms'])
            ax.barh(ys, xs, height=height, label=p)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(models))])
        ax.set_yticklabels(models, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale('log')
        ax.set_xlabel('median latency, ms (log scale)')
        ax.set_title(f'CPU, batch {batch}, {torch.get_num_threads()} threads')
        ax.grid(axis='x', which='both', alpha=0.3)
        ax.legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=DEFAULT_MODELS, metavar='NAME',
                        help=f'models to run (default all): {", ".join(MODELS)}')
    parser.add_argument('--paths', nargs='+', default=list(ALL_PATHS), choices=ALL_PATHS)
    parser.add_argument('--batch', nargs='+', type=int, default=[1])
    parser.add_argument('--size', nargs=2, type=int, default=(224, 224), metavar=('H', 'W'),
                        help='input of backbones; RepPAFPN gets their feature maps of it')
    parser.add_argument('--detector-size', nargs=2, type=int, default=None, metavar=('H', 'W'),
                        help="input of whole models (default: their config's test size)")
    parser.add_argument('--repeats', type=int, default=10, help='timed calls per row (at most)')
    parser.add_argument('--max-seconds', type=float, default=3.0,
                        help='fewer repeats (at least 3) when a row would take longer')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--no-timm', action='store_true', help="skip timm's twins")
    parser.add_argument('--out', default=osp.join(ROOT, 'work_dirs', 'benchmark'))
    parser.add_argument('--append', action='store_true',
                        help='add to DIR/benchmark.json (a row of the same model, path, batch '
                        'and input is replaced) and to DIR/command.txt')
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f'unknown model(s) {unknown}; choose from {list(MODELS)}')
    return args


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # Random weights without normalization (the plain limit's conv chain) decay into
    # denormal floats, which x86 computes many times slower: flush them to zero.
    torch.set_flush_denormal(True)
    os.makedirs(args.out, exist_ok=True)
    onnx_dir = tempfile.mkdtemp(prefix='mmrep_benchmark_onnx_')  # exports are large: not kept
    command = shlex.join(['python', 'tools/benchmark.py'] + list(sys.argv[1:] if argv is None
                                                                  else argv))
    load_before = os.getloadavg()
    print(f'torch {torch.__version__}, {args.threads} threads, load {load_before}', flush=True)
    json_path = osp.join(args.out, 'benchmark.json')
    previous = []
    if args.append and osp.isfile(json_path):
        with open(json_path) as f:
            previous = json.load(f)
    rows = []
    for batch in args.batch:
        for name in args.models:
            rows += bench_model(name, batch, args, onnx_dir)
            new = {_key(r) for r in rows}
            with open(json_path, 'w') as f:
                json.dump([r for r in previous if _key(r) not in new] + rows, f, indent=1)
    shutil.rmtree(onnx_dir, ignore_errors=True)
    with open(json_path) as f:
        rows = json.load(f)
    text = write_markdown(rows, osp.join(args.out, 'benchmark.md'))
    targets = check_targets(rows)
    with open(osp.join(args.out, 'benchmark.md'), 'w') as f:
        f.write(text + '\nTargets (issue #12)\n\n' + '\n'.join(targets) + '\n')
    print('\n'.join(targets))
    plot(rows, osp.join(args.out, 'benchmark.png'))
    import onnxruntime
    with open(osp.join(args.out, 'command.txt'), 'a' if args.append else 'w') as f:
        f.write(f'{command}\n'
                f'date (UTC): {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}\n'
                f'torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, '
                f'{args.threads} threads, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}\n'
                f'load average (1/5/15 min) before: {load_before}, after: {os.getloadavg()}\n\n')
    print(f'wrote {args.out}/benchmark.json, benchmark.png, benchmark.md, command.txt')
    return rows


if __name__ == '__main__':
    main()
