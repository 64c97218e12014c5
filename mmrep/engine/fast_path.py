"""The fastest correct memory layout of a fused model: one decision for every inference tool.

``tools/test.py`` (through :class:`~mmrep.engine.rep_deploy_hook.RepDeployHook`), the demo's
latency line, ``tools/benchmark.py`` and the hook's fused validation all call
:func:`to_fast_path` after fusing, so they run the same layout.

Why: a fused network is plain convs, and on the CPU builds of torch this
project uses (oneDNN), depthwise and large-kernel convs run several times
slower in NCHW than in channels_last (NHWC) (RepLKNet-31B: about 5x), while
dense 3x3 convs are at least as fast in channels_last; ``benchmarks/`` holds
the measurements per model (``fused`` vs ``fused_channels_last`` rows).

The decision, in this order:

1. an explicit ``memory_format`` (``'channels_last'`` or ``'contiguous'``) wins;
2. with ``run`` (a representative forward pass): a one-off measurement, the
   median of a few passes in each layout; channels_last only when it is
   faster *and* gives the same outputs as NCHW;
3. the rule: channels_last for a model on the CPU that has convolutions,
   else NCHW. A model on another device is left in the layout it has: cuDNN's
   choice depends on precision and is not measured here.

The layout changes only where tensors live in memory, so outputs equal the
NCHW outputs up to float rounding, for every model: mmcv's compiled ops
(``RoIAlign``, ``DeformConv2d``, ``ModulatedDeformConv2d``, ... every module
of ``mmcv.ops``) index their inputs and weights as NCHW memory, so their
weights stay NCHW and a pre-hook hands them NCHW inputs; the rest of a
two-stage detector (backbone, neck, heads' convs) runs channels_last.
tests/test_fast_path.py checks the shipped Mask R-CNN configs and deformable
convs.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from mmrep.engine.measure import median_ms
from mmrep.reparam import unwrap_model

MEMORY_FORMATS = {'channels_last': torch.channels_last, 'contiguous': torch.contiguous_format}
CHOICES = ('auto',) + tuple(MEMORY_FORMATS)
_HOOK_ATTR = '_mmrep_memory_format_hook'


def _to_format(value: Any, memory_format: torch.memory_format) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() == 4 and value.is_floating_point():
        return value.contiguous(memory_format=memory_format)
    return value


def _inputs_in(memory_format: torch.memory_format) -> Callable:
    """A forward pre-hook that puts a module's 4D float inputs in ``memory_format``."""

    def hook(module: nn.Module, args: tuple, kwargs: dict):
        # Image batches reach a detector as ``inputs=`` and a backbone as its first argument.
        return (tuple(_to_format(a, memory_format) for a in args),
                {k: _to_format(v, memory_format) for k, v in kwargs.items()})

    return hook


_channels_last_inputs = _inputs_in(torch.channels_last)
_contiguous_inputs = _inputs_in(torch.contiguous_format)


def reads_nchw_memory(module: nn.Module) -> bool:
    """Is ``module`` one of mmcv's compiled ops, which read tensors as NCHW memory?"""
    return any(cls.__module__.startswith('mmcv.ops') for cls in type(module).__mro__)


def _has_convs(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _on_cpu(model: nn.Module) -> bool:
    param = next(model.parameters(), None)
    return param is None or param.device.type == 'cpu'


def current_memory_format(model: nn.Module) -> str:
    """``'channels_last'`` if the model's conv weights are channels_last, else ``'contiguous'``."""
    return 'channels_last' if any(
        isinstance(m, nn.Conv2d) and m.weight.dim() == 4 and not m.weight.is_contiguous()
        and m.weight.is_contiguous(memory_format=torch.channels_last)
        for m in unwrap_model(model).modules()) else 'contiguous'


def rule_memory_format(model: nn.Module) -> str:
    """The documented rule: ``'channels_last'`` on the CPU for a model with convs.

    A model on another device keeps its current layout.
    """
    model = unwrap_model(model)
    if not _on_cpu(model):
        return current_memory_format(model)
    return 'channels_last' if _has_convs(model) else 'contiguous'


def apply_memory_format(model: nn.Module, memory_format: str) -> nn.Module:
    """Put ``model``'s weights (and, by a pre-hook, its 4D inputs) in ``memory_format``.

    With ``'channels_last'``, modules that read NCHW memory
    (:func:`reads_nchw_memory`) keep NCHW weights and get NCHW inputs. In
    place and repeatable: applying ``'contiguous'`` undoes ``'channels_last'``.
    """
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f'memory_format must be one of {tuple(MEMORY_FORMATS)}, '
                         f'got {memory_format!r}')
    inner = unwrap_model(model)
    inner.to(memory_format=MEMORY_FORMATS[memory_format])
    for handle in getattr(inner, _HOOK_ATTR, None) or ():
        handle.remove()
    handles = []
    if memory_format == 'channels_last':
        handles.append(inner.register_forward_pre_hook(_channels_last_inputs, with_kwargs=True))
        for module in inner.modules():
            if reads_nchw_memory(module):
                module.to(memory_format=torch.contiguous_format)
                handles.append(module.register_forward_pre_hook(_contiguous_inputs,
                                                                with_kwargs=True))
    setattr(inner, _HOOK_ATTR, handles)
    return model


def _tensors(value) -> list:
    """The tensors in a model's output: nested tuples, lists, dicts and mmengine data elements."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = [value[k] for k in sorted(value, key=str)]
    elif hasattr(value, 'all_items'):  # DetDataSample, InstanceData, ...
        value = [v for _, v in sorted(value.all_items(), key=lambda kv: kv[0])]
    elif not isinstance(value, (list, tuple)):
        return []
    return [t for v in value for t in _tensors(v)]


def outputs_agree(got, want, rtol: float = 1e-3) -> bool:
    """Do two outputs of a model hold the same tensors, up to float rounding?

    Float tensors within ``rtol`` of the largest value; others (labels,
    binary masks) may differ in at most ``rtol`` of their elements.
    """
    got, want = _tensors(got), _tensors(want)
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
        return False
    for g, w in zip(got, want):
        if g.numel() == 0:
            continue
        if w.is_floating_point():
            scale = w.abs().max().clamp_min(1e-6)
            if not torch.allclose(g.float(), w.float(), rtol=rtol, atol=rtol * float(scale)):
                return False
        elif (g != w).float().mean() > rtol:
            return False
    return True


def measure_memory_format(model: nn.Module, run: Callable[[], Any], repeats: int = 3) -> dict:
    """Time ``run()`` (a forward pass of ``model``) in each layout; leaves ``model`` NCHW.

    Returns ``{'contiguous': ms, 'channels_last': ms}``; a layout whose
    forward pass fails, or whose outputs differ from NCHW's beyond float
    rounding (:func:`outputs_agree`), is left out.
    """
    timings, outputs = {}, {}

    def recorded(name):
        def call():
            outputs[name] = run()
            return outputs[name]
        return call

    with torch.no_grad():
        for name in ('contiguous', 'channels_last'):
            apply_memory_format(model, name)
            try:
                timings[name] = median_ms(recorded(name), repeats)
            except RuntimeError:  # e.g. a .view() on a channels_last tensor
                pass
    apply_memory_format(model, 'contiguous')
    if 'channels_last' in timings and not (
            'contiguous' in outputs and outputs_agree(outputs['channels_last'],
                                                      outputs['contiguous'])):
        del timings['channels_last']  # an op that reads NCHW memory: never a wrong result
    return timings


def choose_memory_format(model: nn.Module, run: Optional[Callable[[], Any]] = None,
                         repeats: int = 3) -> str:
    """The layout :func:`to_fast_path` would pick: measured with ``run``, else the rule."""
    if run is None:
        return rule_memory_format(model)
    timings = measure_memory_format(model, run, repeats)
    return min(timings, key=timings.get) if timings else 'contiguous'


def to_fast_path(model: nn.Module, memory_format: str = 'auto',
                 run: Optional[Callable[[], Any]] = None) -> str:
    """Put a (fused) model on its fastest correct layout; return the layout chosen.

    Args:
        model: the model (wrappers are looked through); changed in place.
        memory_format: ``'auto'`` (measure with ``run`` if given, else the
            rule), ``'channels_last'`` or ``'contiguous'``.
        run: optional callable doing one representative forward pass of
            ``model`` (no arguments), for the one-off measurement.
    """
    if memory_format not in CHOICES:
        raise ValueError(f'memory_format must be one of {CHOICES}, got {memory_format!r}')
    if memory_format == 'auto':
        if run is None and not _on_cpu(unwrap_model(model)):
            return current_memory_format(model)  # the rule changes nothing off the CPU
        memory_format = choose_memory_format(model, run)
    apply_memory_format(model, memory_format)
    return memory_format
