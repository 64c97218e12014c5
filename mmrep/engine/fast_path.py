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
2. with ``example`` inputs: a one-off measurement, the median of a few
   forward passes in each layout; channels_last only when it is faster;
3. the rule: channels_last for a model on the CPU that has convolutions,
   else the layout is left as it is (NCHW). On GPUs the rule changes nothing:
   cuDNN's choice depends on precision and is not measured here.

The layout changes only where tensors live in memory: outputs equal NCHW
outputs up to float rounding (tests/test_fast_path.py checks this).
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


def _channels_last_inputs(module: nn.Module, args: tuple, kwargs: dict):
    # Image batches reach a detector as ``inputs=`` and a backbone as its first argument.
    fmt = torch.channels_last
    return (tuple(_to_format(a, fmt) for a in args),
            {k: _to_format(v, fmt) for k, v in kwargs.items()})


def _has_convs(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _on_cpu(model: nn.Module) -> bool:
    param = next(model.parameters(), None)
    return param is None or param.device.type == 'cpu'


def rule_memory_format(model: nn.Module) -> str:
    """The documented rule: ``'channels_last'`` on the CPU for a model with convs."""
    model = unwrap_model(model)
    return 'channels_last' if _on_cpu(model) and _has_convs(model) else 'contiguous'


def apply_memory_format(model: nn.Module, memory_format: str) -> nn.Module:
    """Put ``model``'s weights (and, by a pre-hook, its 4D inputs) in ``memory_format``.

    In place and repeatable: applying ``'contiguous'`` undoes ``'channels_last'``.
    """
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f'memory_format must be one of {tuple(MEMORY_FORMATS)}, '
                         f'got {memory_format!r}')
    inner = unwrap_model(model)
    inner.to(memory_format=MEMORY_FORMATS[memory_format])
    handle = getattr(inner, _HOOK_ATTR, None)
    if handle is not None:
        handle.remove()
        setattr(inner, _HOOK_ATTR, None)
    if memory_format == 'channels_last':
        setattr(inner, _HOOK_ATTR,
                inner.register_forward_pre_hook(_channels_last_inputs, with_kwargs=True))
    return model


def measure_memory_format(model: nn.Module, run: Callable[[], Any], repeats: int = 3) -> dict:
    """Time ``run()`` (a forward pass of ``model``) in each layout; leaves ``model`` NCHW.

    Returns ``{'contiguous': ms, 'channels_last': ms}``; a layout whose
    forward pass fails is left out.
    """
    timings = {}
    with torch.no_grad():
        for name in ('contiguous', 'channels_last'):
            apply_memory_format(model, name)
            try:
                timings[name] = median_ms(run, repeats)
            except RuntimeError:  # e.g. a .view() on a channels_last tensor
                pass
    apply_memory_format(model, 'contiguous')
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
        memory_format = choose_memory_format(model, run)
    apply_memory_format(model, memory_format)
    return memory_format
