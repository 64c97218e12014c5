"""Strict loading of pretrained weights into mmrep backbones.

mmengine's ``init_cfg=dict(type='Pretrained', checkpoint=...)`` loads with
``strict=False``: a checkpoint of another model, arch or layout only logs a
warning and the network then trains from random weights (the classic
"my fused model is wrong" report, RepVGG issue #35). mmrep backbones load
through :func:`load_state_strict` instead, which refuses any checkpoint that
does not cover the backbone exactly and names the keys that do not fit.
(Getting the weights, by name and in any known layout, is glue:
:mod:`mmrep.pretrained_init`.)

:func:`compare_state_dict` is also the check ``tools/convert_weights.py``
runs on a converted checkpoint before writing it.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, NamedTuple, Sequence, Tuple

import torch
from mmengine.logging import print_log
from torch import nn

#: Key suffixes a checkpoint may lack. A BatchNorm without its step counter loads
#: fine (torch fills it in), and the counter does not change the eval-mode output.
OPTIONAL_SUFFIXES = ('num_batches_tracked',)


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


def optional_prefixes(module: nn.Module) -> Tuple[str, ...]:
    """Layers that pretrained (ImageNet) checkpoints may lack or have more of than ``module``."""
    return tuple(getattr(module, 'pretrained_optional_prefixes', ()))


def _owners(module: nn.Module, keys: Sequence[str], prefixes: Sequence[str]) -> Dict[str, nn.Module]:
    """The submodules right under an optional prefix that ``keys`` belong to (``out_norms.2``)."""
    owners = {}
    for key in keys:
        prefix = next(p for p in prefixes if key.startswith(p))
        name = prefix + key[len(prefix):].split('.')[0]
        owners[name] = module.get_submodule(name)
    return owners


def refuse_mismatch(module: nn.Module, state: Mapping[str, torch.Tensor], checkpoint: str,
                    hints: Sequence[str] = ()) -> None:
    """Raise :class:`PretrainedMismatchError` naming the keys if ``state`` does not cover
    ``module`` (optional layers may be missing; surplus ones must be removed first)."""
    expected = {k: v.shape for k, v in module.state_dict().items()}
    mismatch = compare_state_dict(expected, state, optional_prefixes(module))
    if mismatch:
        raise PretrainedMismatchError(
            f'{type(module).__name__}: the Pretrained checkpoint {checkpoint} does not fit '
            f'this backbone: {mismatch.describe()}.' + ''.join(' ' + h for h in hints))


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], checkpoint: str,
                      hints: Sequence[str] = ()) -> None:
    """Load ``state`` into ``module`` if it covers it exactly, else raise naming the keys.

    The :class:`PretrainedMismatchError` gives how many keys are missing,
    unexpected or of the wrong shape, names the first few, and adds ``hints``.

    A module may list, in its ``pretrained_optional_prefixes`` attribute,
    layers that pretrained checkpoints may not have, or have more of
    (RepLKNet's output norms: ImageNet checkpoints have none, downstream ones
    all four): keys under them that the module has no place for are skipped,
    and each such layer the checkpoint lacks is reset to its fresh state by
    its ``reset_parameters`` (a layer without one refuses the checkpoint).
    Both are logged.
    """
    expected = {k: v.shape for k, v in module.state_dict().items()}
    optional = optional_prefixes(module)
    surplus = sorted(k for k in state if k not in expected and k.startswith(optional))
    state = {k: v for k, v in state.items() if k not in surplus}
    refuse_mismatch(module, state, checkpoint, hints)
    fresh = sorted(k for k in expected if k not in state and k.startswith(optional)
                   and not k.endswith(OPTIONAL_SUFFIXES))
    owners = _owners(module, fresh, optional)
    unresettable = sorted(name for name, owner in owners.items()
                          if not callable(getattr(owner, 'reset_parameters', None)))
    if unresettable:
        raise PretrainedMismatchError(
            f'{type(module).__name__}: the Pretrained checkpoint {checkpoint} has no weights for '
            f'{", ".join(unresettable)}, and these layers have no fresh state to start from '
            '(no reset_parameters)')
    module.load_state_dict(state, strict=False)  # strict but for OPTIONAL_SUFFIXES and `fresh`
    for owner in owners.values():
        owner.reset_parameters()
    if owners:
        print_log(f'{type(module).__name__}: {", ".join(owners)} are not in {checkpoint}; '
                  'they start fresh (reset_parameters)', logger='current')
    if surplus:
        print_log(f'{type(module).__name__}: skipped {len(surplus)} keys of {checkpoint} that '
                  f'this backbone has no place for: {", ".join(surplus)}', logger='current')
