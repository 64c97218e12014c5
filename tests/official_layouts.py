"""The official MobileOne and RepViT checkpoint layouts, written from the official key names.

The official repos are not packages: tests build their checkpoints from timm's
models of the same weights, renamed to the official names of apple/ml-mobileone
``mobileone.py`` (``MobileOne``, ``MobileOneBlock``, ``SEBlock``) and THU-MIG/RepViT
``model/repvit.py`` (``RepViT.features``, ``RepViTBlock``, ``RepVGGDW``, ``Conv2d_BN``,
``Residual``, ``Classfier``; ``utils.replace_batchnorm`` for the fused form), and
checked against the naming patterns below.
"""
from __future__ import annotations

import re

from torch import nn

_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
OFFICIAL_MOBILEONE_KEY = re.compile(
    r'^(stage0|stage[1-4]\.\d+)\.(rbr_conv\.\d+\.(conv\.weight|bn\.' + _BN + r')'
    r'|rbr_scale\.(conv\.weight|bn\.' + _BN + r')|rbr_skip\.' + _BN +
    r'|reparam_conv\.(weight|bias)|se\.(reduce|expand)\.(weight|bias))$|^linear\.(weight|bias)$')
_CONV_BN = r'(c\.weight|bn\.' + _BN + r')'
OFFICIAL_REPVIT_KEY = re.compile(
    r'^features\.0\.[02]\.' + _CONV_BN + r'$'
    r'|^features\.\d+\.token_mixer\.0\.(conv\.' + _CONV_BN + r'|conv1\.(weight|bias)'
    r'|conv1\.' + _CONV_BN + r'|bn\.' + _BN + r')$'  # RepVGGDW (legacy: conv1 a Conv2d_BN)
    r'|^features\.\d+\.token_mixer\.1\.fc[12]\.(weight|bias)$'  # timm SqueezeExcite
    r'|^features\.\d+\.token_mixer\.[02]\.' + _CONV_BN + r'$'  # the stride-2 block
    r'|^features\.\d+\.channel_mixer\.m\.[02]\.' + _CONV_BN + r'$'  # Residual(Sequential)
    r'|^classifier\.classifier(_dist)?\.(bn\.' + _BN + r'|l\.(weight|bias))$')
# utils.replace_batchnorm: every fuse() result is an nn.Conv2d / nn.Linear at the module's path
OFFICIAL_REPVIT_FUSED_KEY = re.compile(
    r'^features\.(0\.[02]|\d+\.token_mixer\.[02]|\d+\.channel_mixer\.m\.[02])\.(weight|bias)$'
    r'|^features\.\d+\.token_mixer\.1\.fc[12]\.(weight|bias)$|^classifier\.(weight|bias)$')


def official_mobileone_state(timm_state: dict) -> dict:
    """The official checkpoint of the same weights (``mobileone_s*_unfused.pth.tar`` /
    ``mobileone_s*.pth.tar``): timm's ``mobileone_*`` with the official names."""
    out = {}
    for key, value in timm_state.items():
        key = re.sub(r'^stem\.', 'stage0.', key)
        key = re.sub(r'^stages\.(\d)\.', lambda m: f'stage{int(m[1]) + 1}.', key)
        key = re.sub(r'^head\.fc\.', 'linear.', key)
        for old, new in (('conv_kxk', 'rbr_conv'), ('conv_scale', 'rbr_scale'),
                         ('.identity.', '.rbr_skip.'), ('attn.fc1', 'se.reduce'),
                         ('attn.fc2', 'se.expand')):
            key = key.replace(old, new)
        out[key] = value
    bad = [k for k in out if not OFFICIAL_MOBILEONE_KEY.match(k)]
    assert not bad, f'not official MobileOne names: {bad[:5]}'
    return out


def official_repvit_state(timm_model) -> dict:
    """The official ``RepViT.features`` checkpoint of timm's weights (training or fused form).

    The official flat list has one entry per block: the stem, then per stage the
    pre-block (timm ``downsample.pre_block``), the stride-2 block and the blocks.
    """
    renames = [(r'^stem\.conv1\.', 'features.0.0.'), (r'^stem\.conv2\.', 'features.0.2.'),
               (r'^head\.head\.', 'classifier.classifier.'),
               (r'^head\.head_dist\.', 'classifier.classifier_dist.'),
               (r'^head\.(weight|bias)$', r'classifier.\1')]
    feature = 1
    for i, stage in enumerate(timm_model.stages):
        if i > 0:
            renames.append((rf'^stages\.{i}\.downsample\.pre_block\.', f'features.{feature}.'))
            renames.append((rf'^stages\.{i}\.downsample\.', f'features.{feature + 1}.'))
            feature += 2
        for j in range(len(stage.blocks)):
            renames.append((rf'^stages\.{i}\.blocks\.{j}\.', f'features.{feature}.'))
            feature += 1
    parts = [(r'\.token_mixer\.(?=conv|bn|weight|bias)', '.token_mixer.0.'),
             (r'\.se\.', '.token_mixer.1.'),
             (r'\.channel_mixer\.conv1\.', '.channel_mixer.m.0.'),
             (r'\.channel_mixer\.conv2\.', '.channel_mixer.m.2.'),
             (r'\.spatial_downsample\.', '.token_mixer.0.'),
             (r'\.channel_downsample\.', '.token_mixer.2.'),
             (r'\.ffn\.conv1\.', '.channel_mixer.m.0.'), (r'\.ffn\.conv2\.', '.channel_mixer.m.2.')]
    out = {}
    for key, value in timm_model.state_dict().items():
        for pattern, new in renames:
            key, n = re.subn(pattern, new, key)
            if n:
                break
        for pattern, new in parts:
            key = re.sub(pattern, new, key)
        out[key] = value
    fused = any(k == 'features.0.0.weight' for k in out)
    naming = OFFICIAL_REPVIT_FUSED_KEY if fused else OFFICIAL_REPVIT_KEY
    bad = [k for k in out if not naming.match(k)]
    assert not bad, f'not official RepViT names: {bad[:5]}'
    # one official features entry per block, two for each timm downsample (pre-block, stride 2)
    assert feature - 1 == sum(len(s.blocks) + (0 if isinstance(s.downsample, nn.Identity) else 2)
                              for s in timm_model.stages)
    return out
