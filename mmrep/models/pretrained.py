"""Strict loading of pretrained weights into mmrep backbones.

mmengine's ``init_cfg=dict(type='Pretrained', checkpoint=...)`` loads with
``strict=False``: a checkpoint of another model, arch or layout only logs a
warning and the network then trains from random weights (the classic
"my fused model is wrong" report, RepVGG issue #35). mmrep backbones load
through :func:`load_pretrained` instead, which refuses any checkpoint that
does not cover the backbone exactly and names the keys that do not fit.

:func:`compare_state_dict` is also the check ``tools/convert_weights.py``
runs on a converted checkpoint before writing it.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log
from mmengine.model.weight_init import PretrainedInit, update_init_info
from mmengine.runner.checkpoint import CheckpointLoader
from torch import nn

from mmrep.models.unwrap import CheckpointLayoutError, unwrap_state_dict

#: Key suffixes a checkpoint may lack. A BatchNorm without its step counter loads
#: fine (torch fills it in), and the counter does not change the eval-mode output.
OPTIONAL_SUFFIXES = ('num_batches_tracked',)
CONVERT_HINT = ('Checkpoints of the official repos, timm or mmpretrain must be converted '
                'first: run tools/convert_weights.py (docs/en/user_guides/pretrained_weights.md).')


class StateDictMismatch(NamedTuple):
    """How a state dict differs from the one a model expects."""
    missing: List[str]
    unexpected: List[str]
    wrong_shape: List[Tuple[str, tuple, tuple]]  # (key, shape given, shape expected)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)

    def describe(self, limit: int = 5) -> str:
        """``'3 missing keys (a, b, c), 1 unexpected key (d)'``: counts and the first few names."""

        def listed(items: List[str], what: str, suffix: str = '') -> str:
            shown = ', '.join(items[:limit]) + (', ...' if len(items) > limit else '')
            return f'{len(items)} {what}{"s" if len(items) != 1 else ""}{suffix} ({shown})'

        parts = []
        if self.missing:
            parts.append(listed(self.missing, 'missing key'))
        if self.unexpected:
            parts.append(listed(self.unexpected, 'unexpected key'))
        if self.wrong_shape:
            parts.append(listed([f'{k}: {list(given)} instead of {list(expected)}'
                                 for k, given, expected in self.wrong_shape],
                                'key', ' with the wrong shape'))
        return '; '.join(parts) or 'no difference'


def compare_state_dict(expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor],
                       optional_prefixes: Sequence[str] = (),
                       optional_suffixes: Sequence[str] = OPTIONAL_SUFFIXES) -> StateDictMismatch:
    """Compare ``state`` with the key -> shape map of a model (``{k: v.shape}``).

    Keys ending in one of ``optional_suffixes`` (default :data:`OPTIONAL_SUFFIXES`)
    or starting with one of ``optional_prefixes`` may be missing.
    """
    missing = sorted(k for k in expected
                     if k not in state and not k.endswith(tuple(optional_suffixes))
                     and not k.startswith(tuple(optional_prefixes)))
    unexpected = sorted(k for k in state if k not in expected)
    wrong_shape = sorted((k, tuple(v.shape), tuple(expected[k])) for k, v in state.items()
                         if k in expected and tuple(v.shape) != tuple(expected[k]))
    return StateDictMismatch(missing, unexpected, wrong_shape)


class PretrainedMismatchError(ValueError):
    """A ``Pretrained`` checkpoint that does not cover the backbone; the message names the keys."""


def read_state_dict(checkpoint: str, prefix: Optional[str] = None,
                    map_location='cpu') -> Tuple[Dict[str, torch.Tensor], dict]:
    """The weights in ``checkpoint`` as mmengine's ``Pretrained`` would load them, and its meta.

    Unwrapped by :func:`~mmrep.models.unwrap.unwrap_state_dict`: ``state_dict``
    (or ``model``), without a DDP ``module.`` prefix, and with ``prefix``
    (e.g. ``'backbone'``) only the keys under it, without it.
    """
    ckpt = CheckpointLoader.load_checkpoint(checkpoint, map_location=map_location,
                                            logger='current')
    try:
        state = unwrap_state_dict(ckpt, 'saved', prefix).state
    except CheckpointLayoutError as err:
        raise PretrainedMismatchError(f'{checkpoint}: {err}') from None
    meta = ckpt.get('meta') if isinstance(ckpt.get('meta'), Mapping) else {}
    return state, dict(meta)


def load_pretrained(module: nn.Module, checkpoint: str, prefix: Optional[str] = None,
                    map_location='cpu') -> None:
    """Load ``checkpoint`` into ``module`` if it covers it exactly, else raise.

    The :class:`PretrainedMismatchError` gives how many keys are missing,
    unexpected or of the wrong shape, names the first few, and says how to
    convert a checkpoint of another layout. A module may list, in its
    ``pretrained_optional_prefixes`` attribute, layers that pretrained
    checkpoints do not have (heads added for a downstream task, such as
    RepLKNet's output norms): those keep their initialisation, and say so in the log.
    """
    print_log(f'load {prefix + " in " if prefix else ""}{type(module).__name__} '
              f'from {checkpoint}', logger='current')
    state, meta = read_state_dict(checkpoint, prefix, map_location)
    expected = {k: v.shape for k, v in module.state_dict().items()}
    optional = tuple(getattr(module, 'pretrained_optional_prefixes', ()))
    mismatch = compare_state_dict(expected, state, optional)
    fresh = sorted(k for k in expected if k not in state and k.startswith(optional)
                   and not k.endswith(OPTIONAL_SUFFIXES))
    if fresh and not mismatch:
        print_log(f'{len(fresh)} weights of {type(module).__name__} are not in {checkpoint} and '
                  f'keep their initialisation: {", ".join(fresh)}', logger='current')
    if mismatch:
        hints = []
        if not prefix and any(k.startswith('backbone.') for k in state):
            hints.append("It has 'backbone.' keys (a whole-model checkpoint?): add "
                         "prefix='backbone' to the init_cfg.")
        deploy = getattr(module, 'deploy', None)
        if 'deploy' in meta and deploy is not None and bool(meta['deploy']) != bool(deploy):
            hints.append(f'It was converted for deploy={bool(meta["deploy"])}; build the '
                         f'backbone with deploy={bool(meta["deploy"])}.')
        hints.append(CONVERT_HINT)
        raise PretrainedMismatchError(
            f'{type(module).__name__}: the Pretrained checkpoint {checkpoint} does not fit '
            f'this backbone: {mismatch.describe()}. ' + ' '.join(hints))
    module.load_state_dict(state, strict=False)  # strict but for OPTIONAL_SUFFIXES


class StrictPretrainedInit(PretrainedInit):
    """mmengine's ``Pretrained`` initializer, loading with :func:`load_pretrained` (strict).

    :meth:`RepBackbone.init_weights <mmrep.models.backbones.base.RepBackbone.init_weights>`
    uses it for an ``init_cfg`` of ``type='Pretrained'``.
    """

    def __call__(self, module: nn.Module) -> None:
        load_pretrained(module, self.checkpoint, self.prefix, self.map_location)
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())
