"""RepLKNet checkpoints (official DingXiaoH/RepLKNet-pytorch, mmpretrain) -> mmrep ``RepLKNet``.

Both sources share one layout: ``stem.{0..3}``, ``stages.i.blocks.k``,
``transitions.i`` and optional stage norms ``stages.i.norm``. mmrep keeps the
block names and moves each transition into the stage it feeds:
``stages.i.blocks.k`` -> ``stages.i.k`` for ``i = 0`` and ``stages.i.{k + 1}``
after, ``transitions.i`` -> ``stages.{i + 1}.0``, ``stages.i.norm`` ->
``out_norms.i.bn``. The classifier (``norm`` and ``head`` of the official
model, mmpretrain's ``head``) is dropped.

A stage norm is kept only for the stages the target model normalizes
(``out_norm_stages``; none for the ``ARCHS`` models, whose
``norm_intermediate_features`` is False): mmpretrain classifiers carry
``stages.3.norm`` (their final norm) and downstream checkpoints all four.
The others are dropped and reported, so fewer output stages never fail.

Deploy form (official ``structural_reparam``, mmpretrain ``switch_to_deploy``
or ``small_kernel_merged=True``) merges only the small kernels: 154 BatchNorms
remain (RepLKNet-31B). They are folded with mmrep's own fusion functions into
the BN-free ``deploy=True`` mmrep model: every conv-BN pair
(:func:`~mmrep.fusion.fold_bn`), each pre-norm into the ``pw1`` that follows it
(:func:`~mmrep.fusion.fold_preceding_bn`) and the stage norms into depthwise
``1x1`` convs (:func:`~mmrep.fusion.fold_bn_module`), exactly as
``RepLKNet.reparameterize`` does. Convs already holding a bias (the official
``deep_fuse_BN``) are taken as they are. The BatchNorms use eps 1e-5, the
default of both sources (a state dict does not store it).
"""
from __future__ import annotations

import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmrep import fusion
from mmrep.converters.common import (Conversion, ConversionError, Detection, check_request,
                                     detect_by_conversion)
from mmrep.models.backbones.replknet import RepLKNet

FAMILY = 'replknet'
SOURCES = ('official', 'mmpretrain')
ARCHS = {f'replknet-{name.lower()}': dict(type='RepLKNet', arch=name)
         for name in RepLKNet.arch_settings}

CLASSIFIER_PREFIXES = ('norm.', 'head.', 'neck.')
BN_LEAVES = ('weight', 'bias', 'running_mean', 'running_var')
PRE_NORMS = ('prelkb_bn', 'preffn_bn')

_RENAMES = (
    (re.compile(r'stem\.([0-3])\.(.+)'), lambda m: f'stem.{m[1]}.{m[2]}'),
    (re.compile(r'stages\.0\.blocks\.(\d+)\.(.+)'), lambda m: f'stages.0.{m[1]}.{m[2]}'),
    (re.compile(r'stages\.([1-3])\.blocks\.(\d+)\.(.+)'),
     lambda m: f'stages.{m[1]}.{int(m[2]) + 1}.{m[3]}'),
    (re.compile(r'transitions\.([0-2])\.([01])\.(.+)'),
     lambda m: f'stages.{int(m[1]) + 1}.0.{m[2]}.{m[3]}'),
    (re.compile(r'stages\.([0-3])\.norm\.(.+)'), lambda m: f'out_norms.{m[1]}.bn.{m[2]}'),
)


def _rename(key: str):
    for pattern, target in _RENAMES:
        match = pattern.fullmatch(key)
        if match:
            return target(match)
    return None


def _pop_bn(state: Dict[str, Tensor], prefix: str) -> nn.BatchNorm2d:
    """The eval-mode BatchNorm stored under ``prefix`` (removed from ``state``)."""
    missing = [f'{prefix}.{leaf}' for leaf in BN_LEAVES if f'{prefix}.{leaf}' not in state]
    if missing:
        raise ConversionError(f'cannot fold the BatchNorm {prefix}: missing {missing}')
    weight, bias, mean, var = (state.pop(f'{prefix}.{leaf}') for leaf in BN_LEAVES)
    state.pop(f'{prefix}.num_batches_tracked', None)
    bn = nn.BatchNorm2d(weight.numel(), device=weight.device).eval()
    bn.weight, bn.bias = nn.Parameter(weight, False), nn.Parameter(bias, False)
    bn.running_mean, bn.running_var = mean, var
    return bn


def _fold_deploy(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Renamed official/mmpretrain deploy-form weights -> mmrep ``deploy=True`` weights."""
    state = dict(state)
    out: Dict[str, Tensor] = {}
    with torch.no_grad():
        for key in [k for k in state if k.endswith('.conv.weight')]:
            prefix = key[:-len('.conv.weight')]
            kernel, bias = state.pop(key), state.pop(f'{prefix}.conv.bias', None)
            if f'{prefix}.bn.running_mean' in state or bias is None:
                kernel, bias = fusion.fold_bn(kernel, bias, _pop_bn(state, f'{prefix}.bn'))
            if prefix.endswith('.pw1'):
                block = prefix[:-len('.pw1')]
                norms = [n for n in PRE_NORMS if f'{block}.{n}.running_mean' in state]
                if len(norms) != 1:
                    raise ConversionError(f'{block}: expected one pre-norm of {PRE_NORMS} '
                                          f'before pw1, found {norms}')
                kernel, bias = fusion.fold_preceding_bn(_pop_bn(state, f'{block}.{norms[0]}'),
                                                        kernel, bias)
            out[f'{prefix}.conv.weight'], out[f'{prefix}.conv.bias'] = kernel, bias
        for key in [k for k in state if re.fullmatch(r'out_norms\.\d\.bn\.running_mean', k)]:
            prefix = key[:-len('.bn.running_mean')]
            bn = _pop_bn(state, f'{prefix}.bn')
            out[f'{prefix}.conv.weight'], out[f'{prefix}.conv.bias'] = fusion.fold_bn_module(
                bn, bn.num_features, groups=bn.num_features)
        for key in [k for k in state if '.large_kernel.lkb_reparam.' in k]:
            out[key] = state.pop(key)
    if state:
        raise ConversionError(f'{len(state)} keys of the deploy-form checkpoint have no place in '
                              f'the fused RepLKNet (training-form leftovers?), e.g. '
                              f'{sorted(state)[:5]}')
    return out


def _large_kernel_keys(stage: int, deploy: bool) -> Tuple[str, str]:
    """The keys of the first RepLKBlock's large and small kernel in ``stage`` (mmrep names)."""
    block = f'stages.{stage}.{0 if stage == 0 else 1}.large_kernel'
    return (f'{block}.{"lkb_reparam" if deploy else "lkb_origin.conv"}.weight',
            f'{block}.small_conv.conv.weight')


def _stage_signature(state: Dict[str, Tensor], stage: int, deploy: bool):
    """(width, large kernel, small kernel or None) of a stage from its first RepLKBlock."""
    large_key, small_key = _large_kernel_keys(stage, deploy)
    large = state.get(large_key)
    if large is None:
        return None
    small = state.get(small_key)
    return large.shape[0], large.shape[-1], None if small is None else small.shape[-1]


def _arch_signature(settings: dict, deploy: bool) -> list:
    # the merged deploy kernel no longer shows the small one
    return [(int(c * settings['dw_ratio']), k, None if deploy else settings['small_kernel'])
            for c, k in zip(settings['channels'], settings['large_kernel_sizes'])]


def _check_arch(state: Dict[str, Tensor], arch: str, deploy: bool) -> None:
    """Refuse weights of another RepLKNet arch, naming the arch they belong to and the keys."""
    found = [_stage_signature(state, i, deploy) for i in range(4)]
    expected = _arch_signature(RepLKNet.arch_settings[ARCHS[arch]['arch']], deploy)
    if found == expected:
        return
    names = [name for name, settings in RepLKNet.arch_settings.items()
             if _arch_signature(settings, deploy) == found]
    what = f'RepLKNet-{names[0]}' if names else 'no known RepLKNet arch'
    keys = []
    for stage, (got, want) in enumerate(zip(found, expected)):
        large_key, small_key = _large_kernel_keys(stage, deploy)
        if got is None:
            keys.append(f'{large_key} missing')
            continue
        if got[:2] != want[:2]:
            keys.append(f'{large_key}: {list(state[large_key].shape)} instead of '
                        f'{[want[0], 1, want[1], want[1]]}')
        if got[2] != want[2]:
            shape = list(state[small_key].shape) if small_key in state else 'missing'
            keys.append(f'{small_key}: {shape} instead of '
                        f'{"missing" if want[2] is None else [want[0], 1, want[2], want[2]]}')
    raise ConversionError(
        f'the checkpoint\'s large-kernel convs (channels, kernel, small kernel) per stage are '
        f'{found} ({what}), but arch {arch!r} needs {expected}: {"; ".join(keys)}')


# Automatic conversion keeps every stage norm; the strict load skips those the model lacks.
AUTO_CONVERT_KWARGS = dict(out_norm_stages=None)


def detect(state: Dict[str, Tensor]) -> Optional[Detection]:
    """Arch and form of official / mmpretrain RepLKNet weights (one layout); None if not RepLKNet."""
    if any(re.match(r'stages\.0\.blocks\.0\.', key) for key in state):
        return detect_by_conversion(sys.modules[__name__], state, 'official',
                                    **AUTO_CONVERT_KWARGS)
    return None


def convert(state: Dict[str, Tensor], source: str, arch: Optional[str],
            out_norm_stages: Optional[Sequence[int]] = ()) -> Conversion:
    """Official or mmpretrain RepLKNet weights -> mmrep ``RepLKNet`` keys.

    ``state``: the backbone/classifier state dict without wrappers. Training
    form gives keys for ``RepLKNet(arch)``, deploy form (``lkb_reparam``) for
    ``RepLKNet(arch, deploy=True)``. ``out_norm_stages``: the stages whose
    output norm the target model has (``norm_intermediate_features=True`` and
    in ``out_indices``); the checkpoint's other stage norms are dropped.
    ``out_norm_stages=None`` keeps every stage norm of the checkpoint (the
    strict load skips those the model has no place for). ``arch=None``
    converts without checking the arch.
    """
    arch = check_request('RepLKNet', SOURCES, ARCHS, source, arch)
    renamed: Dict[str, Tensor] = {}
    dropped: List[str] = []
    unknown: List[str] = []
    for key, value in state.items():
        if key.startswith(CLASSIFIER_PREFIXES):
            dropped.append(key)
            continue
        new = _rename(key)
        if new is None:
            unknown.append(key)
        elif (new.startswith('out_norms.') and out_norm_stages is not None
              and int(new.split('.')[1]) not in out_norm_stages):
            dropped.append(key)
        else:
            renamed[new] = value
    if unknown:
        raise ConversionError(f'{len(unknown)} keys are not {source} RepLKNet keys, e.g. '
                              f'{unknown[:5]}')
    if not renamed:
        raise ConversionError('the checkpoint holds no RepLKNet backbone weights')
    missing_norms = [i for i in out_norm_stages or ()
                     if f'out_norms.{i}.bn.running_mean' not in renamed]
    if missing_norms:
        raise ConversionError(f'the checkpoint has no stage norm (stages.i.norm) for stages '
                              f'{missing_norms} of out_norm_stages={tuple(out_norm_stages)}')
    deploy = any('.lkb_reparam.' in key for key in renamed)
    unmerged = [key for key in renamed if '.lkb_origin.' in key]
    if deploy and unmerged:
        raise ConversionError(f'the checkpoint mixes merged (lkb_reparam) and unmerged large '
                              f'kernels, e.g. {unmerged[:3]}')
    if arch is not None:
        _check_arch(renamed, arch, deploy)
    if deploy:
        renamed = _fold_deploy(renamed)
    return Conversion(renamed, dropped, deploy)
