"""RepGhostNet checkpoints of ChengpengChen/RepGhost and timm (``repghostnet_*``; the same keys).

The official network groups its 16 bottlenecks as ``blocks.0`` ...
``blocks.8`` (sizes 1, 1, 1, 1, 1, 1, 5, 1, 4); mmrep groups them into the
four stages that end at strides 4/8/16/32 (sizes 3, 2, 6, 5). ``blocks.9``
(the 1x1 conv to 960 channels), ``conv_head`` and ``classifier`` belong to
the ImageNet head and are dropped.

Inside a block: ``ghost*.primary_conv.{0,1}`` -> ``ghost*.primary.{conv,bn}``,
``ghost*.cheap_operation.{0,1}`` -> ``ghost*.cheap.{conv,bn}``,
``ghost*.fusion_bn.0`` -> ``ghost*.fusion_bn``, ``conv_dw`` / ``bn_dw`` ->
``conv_dw.{conv,bn}``, ``shortcut.{0,1,2,3}`` -> ``shortcut.{0,1}.{conv,bn}``;
the stem ``conv_stem`` / ``bn1`` -> ``stem.{conv,bn}``.

The official and timm deploy form fuses only the RepGhost modules'
``cheap_operation`` (+ ``fusion_bn``) into one depthwise conv and keeps the
other BatchNorms. mmrep's ``deploy=True`` network has none, so those are
folded into their convs here with :func:`mmrep.fusion.fold_bn`.
"""
from __future__ import annotations

import sys
from typing import Dict, Optional

from torch import Tensor

from mmrep.converters.common import (Conversion, Detection, check_request, detect_by_conversion,
                                     detect_deploy, drop_by_prefix, fold_bn_pairs,
                                     rename_by_prefix, rename_parts, require_prefix)
from mmrep.models.backbones.repghostnet import RepGhostNet

FAMILY = 'repghostnet'
SOURCES = ('official', 'timm')
ARCHS = {f'repghostnet-{w}x': dict(type='RepGhostNet', widen_factor=w)
         for w in RepGhostNet.WIDEN_FACTORS}
# timm model names (``timm://repghostnet_100.in1k``: width x 100, three digits) -> ARCHS names
TIMM_MODELS = {f'repghostnet_{round(w * 100):03d}': f'repghostnet-{w}x'
               for w in RepGhostNet.WIDEN_FACTORS}

# Bottlenecks per official 'blocks.{i}' group (the 'cfgs' of model/repghost.py).
OFFICIAL_GROUP_SIZES = (1, 1, 1, 1, 1, 1, 5, 1, 4)
HEAD = ('blocks.9.', 'conv_head.', 'classifier.')

_PARTS = (
    ('primary_conv.0', 'primary.conv'), ('primary_conv.1', 'primary.bn'),
    ('cheap_operation.0', 'cheap.conv'), ('cheap_operation.1', 'cheap.bn'),
    ('cheap_operation', 'cheap'),  # deploy form: one conv with bias
    ('fusion_bn.0', 'fusion_bn'),
    ('conv_dw', 'conv_dw.conv'), ('bn_dw', 'conv_dw.bn'),
    ('shortcut.0', 'shortcut.0.conv'), ('shortcut.1', 'shortcut.0.bn'),
    ('shortcut.2', 'shortcut.1.conv'), ('shortcut.3', 'shortcut.1.bn'),
)


def _block_prefixes() -> list:
    """``('blocks.{g}.{j}.', 'stages.{s}.{b}.')`` for all 16 bottlenecks, in order."""
    official = [f'blocks.{g}.{j}.' for g, size in enumerate(OFFICIAL_GROUP_SIZES)
                for j in range(size)]
    mmrep = [f'stages.{s}.{b}.' for s, stage in enumerate(RepGhostNet.ARCH)
             for b in range(len(stage))]
    assert len(official) == len(mmrep), 'the official and mmrep RepGhostNet have 16 blocks'
    return list(zip(official, mmrep))


_TABLE = [('conv_stem.', 'stem.conv.'), ('bn1.', 'stem.bn.')] + _block_prefixes()


def detect(state: Dict[str, Tensor]) -> Optional[Detection]:
    """Width and form of official / timm RepGhostNet weights (the same keys); None if not RepGhostNet."""
    if any(key.startswith('conv_stem.') for key in state) and any(
            key.startswith('blocks.0.0.ghost1.') for key in state):
        return detect_by_conversion(sys.modules[__name__], state, 'official')
    return None


def convert(state: Dict[str, Tensor], source: str, arch: Optional[str]) -> Conversion:
    """Regroup and rename RepGhostNet weights; a deploy-form checkpoint gets its BNs folded.

    The width does not change the renaming; ``arch=None`` converts for any.
    """
    check_request('RepGhostNet', SOURCES, ARCHS, source, arch)
    require_prefix(state, ('conv_stem.',), f'{source} RepGhostNet')
    state, dropped = drop_by_prefix(state, HEAD)
    state = rename_parts(rename_by_prefix(state, _TABLE), _PARTS)
    deploy = detect_deploy(state, r'\.cheap\.(weight|bias)$', r'\.(cheap\.conv|fusion_bn)\.',
                           f'{source} RepGhostNet')
    if deploy:
        state = fold_bn_pairs(state)
    return Conversion(state, dropped, deploy)
