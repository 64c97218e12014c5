"""The one checkpoint unwrapper: the weights inside a loaded checkpoint dict.

Training scripts wrap their weights differently:

=============================  ==================================  ==============================
saved by                       weights                             EMA weights
=============================  ==================================  ==============================
mmengine ``Runner``            ``state_dict``                      --
mmengine with ``EMAHook``      ``ema_state_dict`` (``module.``     ``state_dict``
                               keys, ``steps``): the hook swaps
                               the two sets before saving
timm ``train.py``              ``state_dict``                      ``state_dict_ema``
DeiT-style scripts             ``model``                           ``model_ema``
official RepVGG ``main.py``    ``model``                           ``ema``
a bare ``model.state_dict()``  the dict itself                     --
=============================  ==================================  ==============================

:func:`unwrap_state_dict` serves mmengine-style loading (``init_cfg``
``Pretrained``, ``tools/test.py``, the deploy tools: ``weights='saved'``, the
weights the file's ``state_dict`` holds, as mmengine loads them) and the
converters (``weights='raw'`` or ``'ema'``, whichever the user asked for).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, NamedTuple, Optional

import torch

MMENGINE_EMA = 'ema_state_dict'  # EMAHook's averaged model: 'module.' keys and 'steps'
EMA_WRAPPERS = ('state_dict_ema', 'model_ema', 'ema')
WRAPPERS = ('state_dict', 'model')
DDP_PREFIX = 'module.'


class CheckpointLayoutError(ValueError):
    """The checkpoint does not hold the weights asked for; the message says what it holds."""


class Unwrapped(NamedTuple):
    state: Dict[str, torch.Tensor]  # the weights, unwrapped
    dropped: List[str]              # keys left out (not tensors, EMA counters, other prefixes)
    notes: List[str]                # where the weights came from, for the user


def _first_keys(keys, limit: int = 10) -> str:
    keys = list(keys)
    return ', '.join(map(str, keys[:limit])) + (', ...' if len(keys) > limit else '')


def _is_mapping(checkpoint: Mapping, key: str) -> bool:
    return isinstance(checkpoint.get(key), Mapping)


def _pick(checkpoint: Mapping, weights: str):
    """``(inner dict, its key or None, notes)`` for ``weights`` saved, raw or ema."""
    mmengine_ema = _is_mapping(checkpoint, MMENGINE_EMA) and _is_mapping(checkpoint, 'state_dict')
    if weights == 'saved':
        found = next((w for w in WRAPPERS if _is_mapping(checkpoint, w)), None)
        return (checkpoint[found], found, []) if found else (checkpoint, None, [])
    if mmengine_ema:
        if weights == 'ema':
            return checkpoint['state_dict'], 'state_dict', [
                "took the EMA weights from 'state_dict' (mmengine's EMAHook swaps them there "
                f"before saving; {MMENGINE_EMA!r} holds the raw ones)"]
        return checkpoint[MMENGINE_EMA], MMENGINE_EMA, [
            f"took the raw (non-EMA) weights from {MMENGINE_EMA!r}: mmengine's EMAHook saves "
            "the EMA weights as 'state_dict'; pass --ema (ema=True) to convert those"]
    ema = next((w for w in EMA_WRAPPERS if _is_mapping(checkpoint, w)), None)
    if weights == 'ema':
        if ema is None:
            raise CheckpointLayoutError(
                f'the checkpoint has no EMA weights (looked for {", ".join(EMA_WRAPPERS)} and '
                f"mmengine's {MMENGINE_EMA}); its top-level keys are {_first_keys(checkpoint)}")
        return checkpoint[ema], ema, [f'took the EMA weights from {ema!r}']
    found = next((w for w in WRAPPERS if _is_mapping(checkpoint, w)), None)
    notes = [f'took the weights from {found!r}'] if found else []
    if ema is not None:
        notes.append(f'the checkpoint also holds EMA weights ({ema!r}): pass --ema (ema=True) '
                     'to convert those')
    return (checkpoint[found], found, notes) if found else (checkpoint, None, notes)


def unwrap_state_dict(checkpoint, weights: str = 'saved', prefix: Optional[str] = None,
                      prefix_required: bool = True) -> Unwrapped:
    """The weights in a loaded checkpoint, without wrappers and prefixes.

    Args:
        checkpoint: what the checkpoint file holds.
        weights: ``'saved'``: the file's ``state_dict`` (else ``model``, else the
            dict itself), as mmengine loads it; ``'raw'`` / ``'ema'``: the
            training / EMA weights, wherever the saving script put them (see
            the module docstring).
        prefix: keep only the keys under this prefix (``'backbone'``), without it.
        prefix_required: refuse a checkpoint with no key under ``prefix``;
            with False such a checkpoint is taken whole (a backbone-only file).

    Non-tensor values are dropped, and so is the step counter of mmengine's
    averaged model; a DDP ``module.`` prefix on every key is stripped.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointLayoutError(f'the checkpoint holds a {type(checkpoint).__name__}, '
                                    'not a dict of weights')
    if weights not in ('saved', 'raw', 'ema'):
        raise ValueError(f"weights must be 'saved', 'raw' or 'ema', not {weights!r}")
    inner, source, notes = _pick(checkpoint, weights)
    counters = ('steps',) if source == MMENGINE_EMA else ()
    dropped = [k for k, v in inner.items() if not isinstance(v, torch.Tensor) or k in counters]
    state = {k: v for k, v in inner.items() if k not in dropped}
    if state and all(k.startswith(DDP_PREFIX) for k in state):
        state = {k[len(DDP_PREFIX):]: v for k, v in state.items()}
        notes.append(f'stripped the DDP prefix {DDP_PREFIX!r}')
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        inner_keys = [k for k in state if k.startswith(prefix)]
        if inner_keys:
            dropped += [k for k in state if not k.startswith(prefix)]
            state = {k[len(prefix):]: state[k] for k in inner_keys}
            notes.append(f'kept the {prefix!r} weights of a whole-model checkpoint')
        elif prefix_required:
            raise CheckpointLayoutError(f'no key of the checkpoint starts with prefix {prefix!r} '
                                        f'(first keys: {_first_keys(state, 5)})')
    if not state:
        raise CheckpointLayoutError('the checkpoint holds no tensors'
                                    + (f' under {source!r}' if source else ''))
    return Unwrapped(state, dropped, notes)
