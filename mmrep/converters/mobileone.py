"""MobileOne checkpoints of apple/ml-mobileone, timm (``mobileone_s*``), mmpretrain (``MobileOne``).

All three build the same network (stem block, then pairs of depthwise /
pointwise blocks per stage), so conversion is renaming only, in training
form (official ``mobileone_s*_unfused.pth.tar``, timm ``mobileone_s*.apple_in1k``,
mmpretrain ``mobileone-s*_8xb32_in1k``) and in deploy form (official
``mobileone_s*.pth.tar`` and ``reparameterize_model``, timm
``reparameterize_model``, mmpretrain ``switch_to_deploy``):

====================  =====================  ======================  ==========================
mmrep                 official               timm                    mmpretrain
====================  =====================  ======================  ==========================
``stem``              ``stage0``             ``stem``                ``stage0``
``stages.{i}``        ``stage{i+1}``         ``stages.{i}``          ``stage{i+1}``
``branch_convs.{k}``  ``rbr_conv.{k}``       ``conv_kxk.{k}``        ``branch_conv_list.{k}`` (conv, norm)
``branch_scale``      ``rbr_scale``          ``conv_scale``          ``branch_scale`` (conv, norm)
``branch_identity``   ``rbr_skip``           ``identity``            ``branch_norm``
``branch_reparam``    ``reparam_conv``       ``reparam_conv``        ``branch_reparam``
``se.down/up``        ``se.reduce/expand``   ``attn.fc1/fc2``        ``se.conv1/conv2.conv``
(dropped)             ``linear``             ``head``                ``head`` (outside ``backbone.``)
====================  =====================  ======================  ==========================

The official deploy form has no ``rbr_*`` keys and so cannot be told from
another layout by its branches; its stem prefix ``stage0.`` is shared with
mmpretrain, whose deploy keys say ``branch_reparam`` instead.
"""
from __future__ import annotations

import re
import sys
from typing import Dict, Optional

from torch import Tensor

from mmrep.converters.common import (Conversion, Detection, check_request, detect_by_markers,
                                     detect_deploy, rename_stem_and_stages)
from mmrep.models.backbones.mobileone import MobileOne

FAMILY = 'mobileone'
SOURCES = ('official', 'timm', 'mmpretrain')
ARCHS = {f'mobileone-{name}': dict(type='MobileOne', arch=name)
         for name in MobileOne.arch_settings}
# timm model names (``mobileone_s0.apple_in1k``) -> ARCHS names
TIMM_MODELS = {f'mobileone_{name}': f'mobileone-{name}' for name in MobileOne.arch_settings}

# Per source (see common.rename_stem_and_stages): stem and stage prefixes, block part
# renames in passes (a key gets at most one rename per pass), head prefixes, and the
# prefixes that show the layout.
_LAYOUTS = {
    'official': dict(
        stem='stage0.', stage='stage{}.', first_stage=1,
        passes=((('rbr_conv', 'branch_convs'), ('rbr_scale', 'branch_scale'),
                ('rbr_skip', 'branch_identity'), ('reparam_conv', 'branch_reparam'),
                ('se.reduce', 'se.down'), ('se.expand', 'se.up')),),
        head=('linear.',), signature=('stage0.rbr_conv.', 'stage0.reparam_conv.')),
    'timm': dict(
        stem='stem.', stage='stages.{}.', first_stage=0,
        passes=((('conv_kxk', 'branch_convs'), ('conv_scale', 'branch_scale'),
                ('identity', 'branch_identity'), ('reparam_conv', 'branch_reparam'),
                ('attn.fc1', 'se.down'), ('attn.fc2', 'se.up')),),
        head=('head.', 'final_conv.'), signature=('stem.conv_kxk.', 'stem.reparam_conv.')),
    'mmpretrain': dict(
        stem='stage0.', stage='stage{}.', first_stage=1,
        passes=((('branch_conv_list', 'branch_convs'), ('branch_norm', 'branch_identity'),
                ('se.conv1.conv', 'se.down'), ('se.conv2.conv', 'se.up')),
               (('norm', 'bn'),)),  # the BN of each conv-BN branch
        head=('head.', 'neck.'), signature=('stage0.branch_conv_list.', 'stage0.branch_reparam.')),
}


# A key of this layout. timm's fused MobileOne stem (``stem.reparam_conv``) is timm's fused
# RepVGG's too: both families then convert, and the one whose keys fit an arch is taken.
_MARKERS = {
    'official': re.compile(r'stage0\.(rbr_conv|reparam_conv)\.'),
    'timm': re.compile(r'stem\.(conv_kxk\.\d+|reparam_conv)\.'),
    'mmpretrain': re.compile(r'stage0\.(branch_conv_list|branch_reparam)\.'),
}


def detect(state: Dict[str, Tensor]) -> Optional[Detection]:
    """The layout, arch and form of MobileOne weights from their keys and shapes; None if not."""
    return detect_by_markers(sys.modules[__name__], state, _MARKERS)


def convert(state: Dict[str, Tensor], source: str, arch: Optional[str]) -> Conversion:
    """Rename the MobileOne weights of ``source`` to mmrep's; the form (train / deploy) is detected.

    The arch does not change the renaming; ``arch=None`` converts for any.
    """
    check_request('MobileOne', SOURCES, ARCHS, source, arch)
    layout = _LAYOUTS[source]
    state, dropped = rename_stem_and_stages(state, layout, layout['passes'],
                                            f'{source} MobileOne')
    deploy = detect_deploy(state, r'\.branch_reparam\.',
                           r'\.branch_(convs|scale|identity)\.', f'{source} MobileOne')
    return Conversion(state, dropped, deploy)
