"""What every weight converter shares: the result type, unwrapping, renaming, BN folding, checking.

A family module (``repvgg``, ``repghostnet``, ...) turns the backbone
weights of one source layout into mmrep's key names with the helpers here;
:func:`mmrep.converters.convert_checkpoint` then checks the result against
the mmrep backbone with :func:`check_against_backbone` before writing it.

Detection (which layout, arch and form a state dict holds) works on shapes
only: :func:`detect_by_conversion` converts a copy of the state made of
meta tensors (no data is read or computed) and :func:`match_arch` compares
the result with every arch's backbone built on the meta device.
"""
from __future__ import annotations

import functools
import importlib
import re
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmrep import fusion
from mmrep.models.pretrained import compare_state_dict
from mmrep.models.unwrap import CheckpointLayoutError, unwrap_state_dict

StateDict = Dict[str, Tensor]

class ConversionError(ValueError):
    """A checkpoint that cannot become the requested mmrep backbone; the message names the keys."""


class Conversion(NamedTuple):
    state_dict: Dict[str, torch.Tensor]  # mmrep backbone keys (no 'backbone.' prefix)
    dropped: List[str]                   # source keys left out (heads, constant buffers)
    deploy: bool                         # True: the state is for the deploy=True (fused) backbone


def first_keys(keys: Iterable[str], limit: int = 5) -> str:
    """The first ``limit`` keys, comma-separated, with ``...`` if there are more."""
    keys = list(keys)
    return ', '.join(keys[:limit]) + (', ...' if len(keys) > limit else '')


def unwrap_checkpoint(checkpoint, ema: bool = False) -> Tuple[StateDict, List[str], List[str]]:
    """The backbone weights of a loaded checkpoint (:func:`mmrep.models.unwrap.unwrap_state_dict`).

    The raw training weights, or with ``ema`` the EMA weights, wherever the
    saving script put them; from a whole-model checkpoint (``backbone.``
    keys: mmpretrain, mmdet) the backbone only. Returns ``(state, dropped,
    notes)``: the weights, the keys left out, and remarks for the report.
    """
    try:
        return tuple(unwrap_state_dict(checkpoint, 'ema' if ema else 'raw', prefix='backbone',
                                       prefix_required=False))
    except CheckpointLayoutError as err:
        raise ConversionError(f'{"--ema: " if ema else ""}{err}') from None


def drop_by_prefix(state: Mapping[str, Tensor],
                   prefixes: Sequence[str]) -> Tuple[StateDict, List[str]]:
    """``state`` without the keys that start with any of ``prefixes``, and those keys."""
    prefixes = tuple(prefixes)
    kept = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    return kept, [k for k in state if k.startswith(prefixes)]


def _unique(renamed: List[Tuple[str, str, Tensor]]) -> StateDict:
    out: StateDict = {}
    source: Dict[str, str] = {}
    for old, new, value in renamed:
        if new in out:
            raise ConversionError(f'keys {source[new]} and {old} would both become {new}')
        out[new], source[new] = value, old
    return out


def rename_by_prefix(state: Mapping[str, Tensor],
                     table: Sequence[Tuple[str, str]]) -> StateDict:
    """Replace the first prefix of ``table`` ``(old, new)`` that a key starts with.

    Keys that match no prefix keep their name (the check against the model
    then reports them as unexpected).
    """
    renamed = []
    for key, value in state.items():
        new = key
        for old_prefix, new_prefix in table:
            if key.startswith(old_prefix):
                new = new_prefix + key[len(old_prefix):]
                break
        renamed.append((key, new, value))
    return _unique(renamed)


def rename_parts(state: Mapping[str, Tensor], table: Sequence[Tuple[str, str]]) -> StateDict:
    """Rename dotted parts of keys: ``('rbr_dense', 'branch_3x3')`` turns
    ``stages.0.1.rbr_dense.bn.weight`` into ``stages.0.1.branch_3x3.bn.weight``.

    A part matches whole names between dots (``bn`` does not match ``bn_dw``).
    Each key gets the first matching entry of ``table`` only, so an entry may
    produce a name another entry would match (``shortcut.0`` ->
    ``shortcut.0.conv`` next to ``shortcut.1`` -> ``shortcut.0.bn``).
    """
    patterns = [(re.compile(r'(^|\.)' + re.escape(old) + r'(?=\.|$)'), new) for old, new in table]
    renamed = []
    for key, value in state.items():
        new_key = key
        for pattern, new in patterns:
            new_key, count = pattern.subn(lambda m, new=new: m.group(1) + new, key, count=1)
            if count:
                break
        renamed.append((key, new_key, value))
    return _unique(renamed)


def check_request(family: str, sources: Sequence[str], archs: Mapping[str, dict],
                  source: str, arch: Optional[str]) -> Optional[str]:
    """Refuse a ``source`` or ``arch`` that ``family`` does not convert; the arch, lower case.

    ``arch=None``: convert without checking the arch (detection, and loading into
    a backbone of a custom arch, which the strict load then checks key by key).
    """
    if source not in sources:
        raise ConversionError(f'{family} converts from {", ".join(sources)}, not {source!r}')
    if arch is None:
        return None
    if arch.lower() not in archs:
        raise ConversionError(f'unknown {family} arch {arch!r}; valid: {", ".join(sorted(archs))}')
    return arch.lower()


def require_prefix(state: Mapping[str, Tensor], prefixes: Sequence[str], what: str) -> None:
    """Refuse a state in which no key starts with one of ``prefixes`` (another layout)."""
    if not any(k.startswith(tuple(prefixes)) for k in state):
        raise ConversionError(
            f'the checkpoint is not in the {what} layout: no key starts with '
            f'{" or ".join(map(repr, prefixes))} (its first keys: {first_keys(state)}). '
            'Check --from and --arch.')


def detect_deploy(state: Mapping[str, Tensor], deploy_marker: str, train_marker: str,
                  what: str) -> bool:
    """True for a deploy-form (fused) state, False for a training-form one.

    ``deploy_marker`` / ``train_marker``: regular expressions a key of a fused /
    unfused block matches. A state with blocks of both forms is refused.
    """
    fused = [k for k in state if re.search(deploy_marker, k)]
    unfused = [k for k in state if re.search(train_marker, k)]
    if fused and unfused:
        raise ConversionError(f'{what}: the checkpoint mixes fused blocks ({first_keys(fused, 3)}) '
                              f'and training-form blocks ({first_keys(unfused, 3)})')
    return bool(fused)


def _bn_from(state: Mapping[str, Tensor], prefix: str, eps: float) -> nn.BatchNorm2d:
    mean = state[prefix + 'running_mean']
    bn = nn.BatchNorm2d(mean.numel(), eps=eps, affine=prefix + 'weight' in state,
                        device=mean.device)
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(state[prefix + 'running_var'])
    if bn.affine:
        bn.weight.data.copy_(state[prefix + 'weight'])
        bn.bias.data.copy_(state[prefix + 'bias'])
    return bn


def fold_bn_pairs(state: Mapping[str, Tensor], conv: str = 'conv', bn: str = 'bn',
                  eps: float = 1e-5) -> StateDict:
    """Fold every BatchNorm ``P.bn`` into the conv ``P.conv`` before it (``fusion.fold_bn``).

    ``P.conv.weight`` (and ``P.conv.bias`` if present) and the BN's tensors
    become ``P.conv.weight`` and ``P.conv.bias``: the deploy form of an mmrep
    :class:`~mmrep.blocks.base.ConvBN`. ``eps``: the BN's epsilon (PyTorch's
    default 1e-5 in the official repos and timm).
    """
    out = dict(state)
    suffix = f'{bn}.running_mean'
    for key in [k for k in state if k == suffix or k.endswith('.' + suffix)]:
        prefix = key[:-len(suffix)]
        weight_key = f'{prefix}{conv}.weight'
        if weight_key not in state:
            raise ConversionError(f'{prefix}{bn} follows no conv: {weight_key} is missing')
        norm = _bn_from(state, f'{prefix}{bn}.', eps)
        with torch.no_grad():
            kernel, bias = fusion.fold_bn(state[weight_key].float(),
                                          state.get(f'{prefix}{conv}.bias'), norm)
        for name in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'):
            out.pop(f'{prefix}{bn}.{name}', None)
        out[weight_key], out[f'{prefix}{conv}.bias'] = kernel, bias
    return out


def build_backbone(cfg: Mapping) -> nn.Module:
    """An mmrep backbone from ``dict(type=..., **kwargs)`` on the meta device (no memory used)."""
    from mmrep.registry import MODEL_CLASSES
    classes = {cls.__name__: cls for cls in MODEL_CLASSES}
    kwargs = dict(cfg)
    cls = classes[kwargs.pop('type')]
    with torch.device('meta'):
        return cls(**kwargs)


def check_against_backbone(state: Mapping[str, Tensor], cfg: Mapping, arch: str) -> None:
    """Refuse ``state`` unless it loads strictly into the backbone built from ``cfg``."""
    model = build_backbone(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    mismatch = compare_state_dict(expected, state, model.pretrained_optional_prefixes)
    if mismatch:
        form = 'deploy (fused)' if cfg.get('deploy') else 'training'
        raise ConversionError(
            f'the converted weights do not fit the {form}-form backbone of --arch {arch} '
            f'({dict(cfg)}): {mismatch.describe()}. Is the checkpoint of another arch or width, '
            'or of another layout (--from)?')


# ---------------------------------------------------------------- detection


class Detection(NamedTuple):
    """What a state dict holds, as found from its keys and shapes."""
    family: str            # the family module's FAMILY ('repvgg', ...)
    source: str            # its layout: 'official', 'timm', 'mmpretrain', or 'mmrep' (no conversion)
    arch: Optional[str]    # the ARCHS name whose backbone it fits, None if no arch fits exactly
    deploy: bool           # True: the fused (deploy) form

    def describe(self) -> str:
        arch = self.arch or f'{self.family} (no listed arch)'
        form = 'deploy (fused)' if self.deploy else 'training'
        return f'{arch} ({self.source} layout, {form} form)'


def meta_state(state: Mapping[str, Tensor]) -> StateDict:
    """The shapes and dtypes of ``state`` as meta tensors: conversions run on it without data."""
    return {k: torch.empty(v.shape, dtype=v.dtype, device='meta') for k, v in state.items()
            if isinstance(v, Tensor)}


@functools.lru_cache(maxsize=None)
def _arch_shapes(module_name: str, arch: str, deploy: bool) -> Tuple[Dict[str, tuple], tuple]:
    family = importlib.import_module(module_name)
    model = build_backbone(dict(family.ARCHS[arch], deploy=deploy))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return shapes, tuple(getattr(model, 'pretrained_optional_prefixes', ()))


def fits_exactly(expected: Mapping[str, tuple], state: Mapping[str, Tensor],
                 optional_prefixes: Sequence[str]) -> bool:
    """``state`` has every key of ``expected`` with its shape; optional layers may be absent
    or surplus (:func:`mmrep.models.pretrained.compare_state_dict` rules)."""
    optional = tuple(optional_prefixes)
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(optional)}
    return not compare_state_dict(expected, state, optional)


def match_arch(family_module, state: Mapping[str, Tensor], deploy: bool) -> Optional[str]:
    """The arch of ``family_module.ARCHS`` whose ``deploy``-form backbone ``state`` fits, or None.

    Backbones are built on the meta device, once per process.
    """
    for arch in family_module.ARCHS:
        expected, optional = _arch_shapes(family_module.__name__, arch, bool(deploy))
        if fits_exactly(expected, state, optional):
            return arch
    return None


def detect_mmrep_layout(family_module, state: Mapping[str, Tensor]) -> Optional[Detection]:
    """A state already in mmrep's keys for one of the family's archs (either form), else None."""
    for deploy in (False, True):
        arch = match_arch(family_module, state, deploy)
        if arch is not None:
            return Detection(family_module.FAMILY, 'mmrep', arch, deploy)
    return None


def detect_by_conversion(family_module, state: Mapping[str, Tensor], source: str,
                         **convert_kwargs) -> Detection:
    """Convert a meta copy of ``state`` from ``source`` and find the arch it fits.

    The helper every family's ``detect`` ends with once it knows the layout
    from the keys: the conversion's own checks run (a state of the layout
    that cannot be converted raises :class:`ConversionError`), and the arch
    is the one whose backbone the converted keys fit exactly (None if none does).
    """
    conversion = family_module.convert(meta_state(state), source, None, **convert_kwargs)
    arch = match_arch(family_module, conversion.state_dict, conversion.deploy)
    return Detection(family_module.FAMILY, source, arch, conversion.deploy)


def detect_by_markers(family_module, state: Mapping[str, Tensor],
                      markers: Mapping, **convert_kwargs) -> Optional[Detection]:
    """A family's ``detect``: the first layout of ``markers`` (source -> key pattern) that a
    key matches, detected by :func:`detect_by_conversion`; None if no key matches."""
    for source, marker in markers.items():
        if any(marker.match(key) for key in state):
            return detect_by_conversion(family_module, state, source, **convert_kwargs)
    return None


def rename_stem_and_stages(state: Mapping[str, Tensor], layout: Mapping, passes: Sequence,
                           what: str) -> Tuple[StateDict, List[str]]:
    """Renaming of a layout that numbers four stages after a stem (RepVGG, MobileOne).

    ``layout``: ``signature`` (key prefixes that show the layout), ``head``
    (prefixes dropped), ``stem`` and ``stage`` (format with the stage number
    from ``first_stage``) prefixes. ``passes``: tables for :func:`rename_parts`,
    applied one after the other (a key gets one rename per pass). Returns the
    renamed state and the dropped keys.
    """
    from mmrep.models.backbones.base import NUM_STAGES
    require_prefix(state, layout['signature'], what)
    state, dropped = drop_by_prefix(state, layout['head'])
    stages = [(layout['stage'].format(i + layout['first_stage']), f'stages.{i}.')
              for i in range(NUM_STAGES)]
    state = rename_by_prefix(state, [(layout['stem'], 'stem.')] + stages)
    for parts in passes:
        state = rename_parts(state, parts)
    return state, dropped


def describe_against_arch(family_module, state: Mapping[str, Tensor], arch: str,
                          deploy: bool) -> str:
    """How converted ``state`` differs from the backbone of ``arch``: the keys, named."""
    expected, optional = _arch_shapes(family_module.__name__, arch, bool(deploy))
    optional_ = tuple(optional)
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(optional_)}
    return compare_state_dict(expected, state, optional).describe()
