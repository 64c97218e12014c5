"""RepViT checkpoints of THU-MIG/RepViT and timm (``repvit_*``) -> mmrep ``RepViT``.

The official network is one flat list, ``features.0`` (the stem) then one
entry per block; timm groups the same blocks into stages, with the stride-1
block before each stride-2 block as its ``downsample.pre_block``. mmrep
uses timm's stages but keeps that block in the stage list
(``stages.{i}.0``), followed by the stride-2 block (``stages.{i}.1``):

==============================  ==============================  ===================================
mmrep                           official (``features.{f}``)     timm
==============================  ==============================  ===================================
``stem.0`` / ``stem.1``         ``features.0.0`` / ``.0.2``     ``stem.conv1`` / ``stem.conv2``
``stages.{i}.{j}`` (block)      ``features.{f}``                ``stages.{i}.blocks.{j'}``
``stages.{i}.0`` (pre-block)    ``features.{f}``                ``stages.{i}.downsample.pre_block``
``stages.{i}.1`` (stride 2)     ``features.{f}``                ``stages.{i}.downsample``
``token_mixer.branch_3x3``      ``token_mixer.0.conv``          ``token_mixer.conv``
``token_mixer.branch_1x1``      ``token_mixer.0.conv1``         ``token_mixer.conv1``
``token_mixer.post_norm``       ``token_mixer.0.bn``            ``token_mixer.bn``
``se.down/up``                  ``token_mixer.1.fc1/fc2``       ``se.fc1/fc2``
``channel_mixer.conv1/conv2``   ``channel_mixer.m.0/m.2``       ``channel_mixer.conv1/conv2``
``spatial_downsample``          ``token_mixer.0``               ``downsample.spatial_downsample``
``channel_downsample``          ``token_mixer.2``               ``downsample.channel_downsample``
``ffn.conv1/conv2``             ``channel_mixer.m.0/m.2``       ``downsample.ffn.conv1/conv2``
conv-BN ``conv`` / ``bn``       ``c`` / ``bn``                  ``c`` / ``bn``
(dropped)                       ``classifier``                  ``head``
==============================  ==============================  ===================================

Deploy form (official ``utils.replace_batchnorm``, timm ``RepVit.fuse``):
each conv-BN and each token mixer became one ``nn.Conv2d`` at the module's
own path (``features.0.0.weight``, ``...token_mixer.0.weight``), which maps
to mmrep's ``conv`` / ``branch_reparam``.

The legacy archs m1/m2/m3 (the first official release, timm ``legacy=True``)
have ``token_mixer...conv1.{c,bn}`` and no ``token_mixer...bn``; any other
arch refuses them by those keys.
"""
from __future__ import annotations

import re
import sys
from functools import partial
from typing import Dict, List, Optional, Tuple

from torch import Tensor

from mmrep.converters.common import (Conversion, ConversionError, Detection, check_request,
                                     detect_by_markers, detect_deploy, first_keys, require_prefix)
from mmrep.models.backbones.base import NUM_STAGES
from mmrep.models.backbones.repvit import RepViT

FAMILY = 'repvit'
SOURCES = ('official', 'timm')
ARCHS = {f'repvit-{name}': dict(type='RepViT', arch=name) for name in RepViT.arch_settings}
# timm model names (``repvit_m1_1.dist_300e_in1k``) -> ARCHS names
TIMM_MODELS = {f'repvit_{name.replace(".", "_")}': f'repvit-{name}'
               for name in RepViT.arch_settings}
HEADS = {'official': ('classifier.',), 'timm': ('head.',)}

# Module kinds and, per kind, how the leaves of a source module become mmrep's:
# (training-form source leaf prefix, mmrep leaf prefix), then the deploy form
# (None: the module has no fused form and keeps its leaves).
_FUSED_TOKEN_MIXER = (('weight', 'branch_reparam.weight'), ('bias', 'branch_reparam.bias'))
_LEAVES = {
    'conv_bn': ((('c.', 'conv.'), ('bn.', 'bn.')),
                (('weight', 'conv.weight'), ('bias', 'conv.bias'))),
    'token_mixer': ((('conv.c.', 'branch_3x3.conv.'), ('conv.bn.', 'branch_3x3.bn.'),
                     ('conv1.weight', 'branch_1x1.weight'), ('conv1.bias', 'branch_1x1.bias'),
                     ('bn.', 'post_norm.')), _FUSED_TOKEN_MIXER),
    'legacy_token_mixer': ((('conv.c.', 'branch_3x3.conv.'), ('conv.bn.', 'branch_3x3.bn.'),
                            ('conv1.c.', 'branch_1x1.conv.'), ('conv1.bn.', 'branch_1x1.bn.')),
                           _FUSED_TOKEN_MIXER),
    'se': ((('fc1.', 'down.'), ('fc2.', 'up.')), None),
}
ModuleMap = List[Tuple[str, str, str]]  # (source module, mmrep module, kind)


def _block(src: str, dst: str, src_parts: Dict[str, str], legacy: bool) -> ModuleMap:
    """A stride-1 block: token mixer, SE and the FFN's two conv-BNs."""
    mixer = 'legacy_token_mixer' if legacy else 'token_mixer'
    return [(src + src_parts['token_mixer'], dst + 'token_mixer', mixer),
            (src + src_parts['se'], dst + 'se', 'se'),
            (src + src_parts['conv1'], dst + 'channel_mixer.conv1', 'conv_bn'),
            (src + src_parts['conv2'], dst + 'channel_mixer.conv2', 'conv_bn')]


def _downsample(src: str, dst: str, src_parts: Dict[str, str]) -> ModuleMap:
    """A stride-2 block: depthwise and pointwise conv-BNs, then the FFN's two."""
    return [(src + src_parts[name], dst + name, 'conv_bn')
            for name in ('spatial_downsample', 'channel_downsample')] + [
        (src + src_parts['ffn_conv1'], dst + 'ffn.conv1', 'conv_bn'),
        (src + src_parts['ffn_conv2'], dst + 'ffn.conv2', 'conv_bn')]


_OFFICIAL_BLOCK = dict(token_mixer='token_mixer.0', se='token_mixer.1',
                       conv1='channel_mixer.m.0', conv2='channel_mixer.m.2')
_OFFICIAL_DOWNSAMPLE = dict(spatial_downsample='token_mixer.0', channel_downsample='token_mixer.2',
                            ffn_conv1='channel_mixer.m.0', ffn_conv2='channel_mixer.m.2')
_TIMM_BLOCK = dict(token_mixer='token_mixer', se='se', conv1='channel_mixer.conv1',
                   conv2='channel_mixer.conv2')
_TIMM_DOWNSAMPLE = dict(spatial_downsample='spatial_downsample',
                        channel_downsample='channel_downsample',
                        ffn_conv1='ffn.conv1', ffn_conv2='ffn.conv2')


def module_map(source: str, depths, legacy: bool = False) -> ModuleMap:
    """Every conv-BN, token mixer and SE of a RepViT with ``depths``: source path -> mmrep path."""
    official = source == 'official'
    block = partial(_block, legacy=legacy)
    modules = ([('features.0.0', 'stem.0', 'conv_bn'), ('features.0.2', 'stem.1', 'conv_bn')]
               if official else
               [('stem.conv1', 'stem.0', 'conv_bn'), ('stem.conv2', 'stem.1', 'conv_bn')])
    feature = 1
    for i, depth in enumerate(depths):
        if i > 0:
            if official:
                modules += block(f'features.{feature}.', f'stages.{i}.0.', _OFFICIAL_BLOCK)
                modules += _downsample(f'features.{feature + 1}.', f'stages.{i}.1.',
                                       _OFFICIAL_DOWNSAMPLE)
                feature += 2
            else:
                modules += block(f'stages.{i}.downsample.pre_block.', f'stages.{i}.0.',
                                 _TIMM_BLOCK)
                modules += _downsample(f'stages.{i}.downsample.', f'stages.{i}.1.',
                                       _TIMM_DOWNSAMPLE)
        first = 2 if i > 0 else 0
        for j in range(depth):
            src = f'features.{feature}.' if official else f'stages.{i}.blocks.{j}.'
            modules += block(src, f'stages.{i}.{first + j}.',
                             _OFFICIAL_BLOCK if official else _TIMM_BLOCK)
            feature += 1
    return modules


def _rename(key: str, modules: Dict[str, Tuple[str, str]], deploy: bool):
    """The mmrep name of ``key``, or None if no known module holds it."""
    parts = key.split('.')
    for cut in range(len(parts) - 1, 0, -1):  # the longest module path first
        found = modules.get('.'.join(parts[:cut]))
        if found is None:
            continue
        target, kind = found
        leaf = '.'.join(parts[cut:])
        training, fused = _LEAVES[kind]
        for old, new in fused if deploy and fused is not None else training:
            if leaf == old or (old.endswith('.') and leaf.startswith(old)):
                return f'{target}.{new}{leaf[len(old):]}'
        return None
    return None


_LEGACY_MIXER = re.compile(r'token_mixer(\.0)?\.conv1\.(c|bn)\.')
_CURRENT_MIXER = re.compile(r'token_mixer(\.0)?\.(conv1\.weight|bn\.)')
_TIMM_BLOCK_KEY = re.compile(r'stages\.(\d+)\.blocks\.(\d+)\.')
_OFFICIAL_FEATURE_KEY = re.compile(r'features\.(\d+)\.')
_OFFICIAL_STRIDE2_KEY = re.compile(r'features\.(\d+)\.token_mixer\.2\.')


def structure(state: Dict[str, Tensor], source: str) -> Tuple[Tuple[int, ...], bool]:
    """The blocks per stage (``depths``) and the token mixer (``legacy``) the keys describe.

    timm names the blocks of each stage; the official flat list has a stride-2
    block (the only ones with ``token_mixer.2``, their pointwise conv) after
    each stage but the last, preceded by that stage's pre-block.
    """
    legacy = any(_LEGACY_MIXER.search(k) for k in state)
    if source == 'timm':
        found: Dict[int, int] = {}
        for key in state:
            match = _TIMM_BLOCK_KEY.match(key)
            if match:
                stage, block = int(match[1]), int(match[2])
                found[stage] = max(found.get(stage, -1), block + 1)
        depths = tuple(found.get(i, 0) for i in range(max(found, default=-1) + 1))
    else:
        last = max((int(m[1]) for m in map(_OFFICIAL_FEATURE_KEY.match, state) if m), default=0)
        stride2 = sorted({int(m[1]) for m in map(_OFFICIAL_STRIDE2_KEY.match, state) if m})
        bounds = [0] + stride2 + [last + 2]  # a stride-2 block f ends the stage before at f - 2
        depths = tuple(bounds[i + 1] - 2 - bounds[i] for i in range(len(bounds) - 1))
    if len(depths) != NUM_STAGES or min(depths, default=0) < 1:
        raise ConversionError(f'the {source} RepViT keys describe {len(depths)} stages with '
                              f'{list(depths)} blocks, not 4 stages: is it a RepViT checkpoint?')
    return depths, legacy


# A key only this layout has: the stem's first conv-BN, in training or fused form.
_MARKERS = {
    'official': re.compile(r'features\.0\.0\.(c\.weight|weight)$'),
    'timm': re.compile(r'stem\.conv1\.(c\.weight|weight)$'),
}


def detect(state: Dict[str, Tensor]) -> Optional[Detection]:
    """The layout, arch and form of RepViT weights from their keys and shapes; None if not."""
    return detect_by_markers(sys.modules[__name__], state, _MARKERS)


def convert(state: Dict[str, Tensor], source: str, arch: Optional[str]) -> Conversion:
    """Rename official / timm RepViT weights to mmrep's; the form (train / deploy) is detected.

    The network's depths and token mixer are read from the keys (:func:`structure`).
    With ``arch`` they must be the arch's, else a ConversionError names the keys
    that differ (another depth, the legacy token mixer); ``arch=None`` converts
    whatever RepViT the keys describe (widths are checked by the strict load).
    """
    arch = check_request('RepViT', SOURCES, ARCHS, source, arch)
    require_prefix(state, ('features.0.',) if source == 'official' else ('stem.conv1.',),
                   f'{source} RepViT')
    heads = HEADS[source]
    dropped = [k for k in state if k.startswith(heads)]
    state = {k: v for k, v in state.items() if not k.startswith(heads)}
    # a fused conv-BN has a bias at the module's path; a training one keeps its BN there
    deploy = detect_deploy(state, r'(^features\.0\.0|^stem\.conv1)\.bias$',
                           r'(^features\.0\.0|^stem\.conv1)\.bn\.', f'{source} RepViT')
    depths, legacy = structure(state, source)
    if arch is not None:
        _check_structure(state, arch, source, depths, legacy, deploy)
    modules = {src: (dst, kind) for src, dst, kind in module_map(source, depths, legacy)}
    converted, unknown = {}, []
    for key, value in state.items():
        new = _rename(key, modules, deploy)
        if new is None:
            unknown.append(key)
        else:
            converted[new] = value
    if unknown:
        raise ConversionError(f'{len(unknown)} keys of the {source} RepViT checkpoint belong to '
                              f'no RepViT module ({first_keys(unknown)}): is it of another layout?')
    return Conversion(converted, dropped, deploy)


def _last_block_prefix(depths, stage: int, source: str) -> str:
    """The key prefix of the last block of ``stage`` (official: before the next pre-block)."""
    if source == 'timm':
        return f'stages.{stage}.blocks.{depths[stage] - 1}.'
    # features: 0 the stem, then per stage (pre-block and stride-2 block from stage 1) its blocks
    return f'features.{sum(depths[:stage + 1]) + 2 * stage}.'


def _check_structure(state: Dict[str, Tensor], arch: str, source: str, depths, legacy: bool,
                     deploy: bool) -> None:
    settings = RepViT.arch_settings[arch[len('repvit-'):]]
    if tuple(depths) != tuple(settings['depths']):
        stage = next(i for i, (a, b) in enumerate(zip(depths, settings['depths'])) if a != b)
        last = _last_block_prefix(depths, stage, source)
        raise ConversionError(
            f'the checkpoint has {list(depths)} blocks per stage, --arch {arch} has '
            f'{list(settings["depths"])}: its stage {stage} ends with the block '
            f'{last} ({first_keys([k for k in state if k.startswith(last)], 2)}); it is of '
            'another arch or depth')
    if deploy:  # fused, both token mixers are one depthwise conv
        return
    if legacy and not settings['legacy']:
        keys = [k for k in state if _LEGACY_MIXER.search(k)]
        raise ConversionError(f'the token mixers are the legacy ones of m1/m2/m3 '
                              f'({first_keys(keys, 2)}), not those of --arch {arch}: pass '
                              'repvit-m1, -m2 or -m3')
    if not legacy and settings['legacy']:
        keys = [k for k in state if _CURRENT_MIXER.search(k)]
        raise ConversionError(f'the token mixers have a post-sum BN and a biased 1x1 conv '
                              f'({first_keys(keys, 2)}), which the legacy --arch {arch} has not: '
                              'pass repvit-m0.9 ... -m2.3')
