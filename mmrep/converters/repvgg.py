"""RepVGG checkpoints of DingXiaoH/RepVGG, timm (``repvgg_*``) and mmpretrain (``RepVGG``).

All three keep the official structure, so conversion is renaming only, in
training form and in deploy form (official ``convert.py`` /
``repvgg_model_convert``, timm ``reparameterize_model``, mmpretrain
``switch_to_deploy``):

===================  ========================  ========================  ================================
mmrep                official                  timm                      mmpretrain
===================  ========================  ========================  ================================
``stem``             ``stage0``                ``stem``                  ``stem``
``stages.{i}``       ``stage{i+1}``            ``stages.{i}``            ``stage_{i+1}``
``branch_3x3``       ``rbr_dense`` (conv, bn)  ``conv_kxk`` (conv, bn)   ``branch_3x3`` (conv, norm)
``branch_1x1``       ``rbr_1x1``               ``conv_1x1``              ``branch_1x1`` (conv, norm)
``branch_identity``  ``rbr_identity``          ``identity``              ``branch_norm``
``branch_reparam``   ``rbr_reparam``           ``reparam_conv``          ``branch_reparam``
``se.down/up``       ``se.down/up``            ``attn.fc1/fc2``          ``se_layer.conv1/conv2.conv``
(dropped)            ``linear``                ``head``, ``final_conv``  ``head`` (outside ``backbone.``)
===================  ========================  ========================  ================================
"""
from __future__ import annotations

import re
import sys
from typing import Dict, Optional

from torch import Tensor

from mmrep.converters.common import (Conversion, Detection, check_request, detect_by_markers,
                                     detect_deploy, rename_stem_and_stages)
from mmrep.models.backbones.repvgg import RepVGG

FAMILY = 'repvgg'
SOURCES = ('official', 'timm', 'mmpretrain')
ARCHS = {f'repvgg-{name.lower()}': dict(type='RepVGG', arch=name) for name in RepVGG.arch_settings}
# timm model names (``timm://repvgg_a0.rvgg_in1k``) -> ARCHS names
TIMM_MODELS = {f'repvgg_{name.lower()}': f'repvgg-{name.lower()}' for name in RepVGG.arch_settings}

# Per source (see common.rename_stem_and_stages): stem and stage prefixes, block part
# renames, head prefixes, and the prefixes that show a checkpoint is of this layout.
_LAYOUTS = {
    'official': dict(
        stem='stage0.', stage='stage{}.', first_stage=1,
        parts=(('rbr_dense', 'branch_3x3'), ('rbr_1x1', 'branch_1x1'),
               ('rbr_identity', 'branch_identity'), ('rbr_reparam', 'branch_reparam')),
        head=('linear.',), signature=('stage0.rbr_dense.', 'stage0.rbr_reparam.')),
    'timm': dict(
        stem='stem.', stage='stages.{}.', first_stage=0,
        parts=(('conv_kxk', 'branch_3x3'), ('conv_1x1', 'branch_1x1'),
               ('identity', 'branch_identity'), ('reparam_conv', 'branch_reparam'),
               ('attn.fc1', 'se.down'), ('attn.fc2', 'se.up')),
        head=('head.', 'final_conv.'), signature=('stem.conv_kxk.', 'stem.reparam_conv.')),
    'mmpretrain': dict(
        stem='stem.', stage='stage_{}.', first_stage=1,
        parts=(('branch_3x3.norm', 'branch_3x3.bn'), ('branch_1x1.norm', 'branch_1x1.bn'),
               ('branch_norm', 'branch_identity'), ('se_layer.conv1.conv', 'se.down'),
               ('se_layer.conv2.conv', 'se.up')),
        head=('head.', 'neck.'), signature=('stem.branch_3x3.', 'stem.branch_reparam.')),
}
# A key only this layout has (mmpretrain's stem keys are mmrep's own, its stage names are not).
_MARKERS = {
    'official': re.compile(r'stage0\.(rbr_dense|rbr_reparam)\.'),
    'timm': re.compile(r'stem\.(conv_kxk|reparam_conv)\.'),
    'mmpretrain': re.compile(r'stage_1\.0\.branch_'),
}


def detect(state: Dict[str, Tensor]) -> Optional[Detection]:
    """The layout, arch and form of RepVGG weights from their keys and shapes; None if not RepVGG."""
    return detect_by_markers(sys.modules[__name__], state, _MARKERS)


def convert(state: Dict[str, Tensor], source: str, arch: Optional[str]) -> Conversion:
    """Rename the RepVGG weights of ``source`` to mmrep's; the form (train / deploy) is detected.

    The arch does not change the renaming; ``arch=None`` converts for any.
    """
    check_request('RepVGG', SOURCES, ARCHS, source, arch)
    layout = _LAYOUTS[source]
    state, dropped = rename_stem_and_stages(state, layout, [layout['parts']], f'{source} RepVGG')
    deploy = detect_deploy(state, r'\.branch_reparam\.', r'\.branch_(3x3|1x1|identity)\.',
                           f'{source} RepVGG')
    return Conversion(state, dropped, deploy)
