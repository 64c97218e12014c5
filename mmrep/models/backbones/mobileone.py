"""MobileOne backbone for detection and segmentation: a plain conv + ReLU network after fusion."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

from torch import nn

from mmrep.blocks.mobileone import MobileOneBlock
from mmrep.models.backbones.base import (NUM_STAGES, RepBackbone, make_norm_layer,
                                         resolve_arch)

_DEPTHS = (2, 8, 10, 1)
_BASE_WIDTHS = (64, 128, 256, 512)


def _arch(width_factor, num_conv_branches=1, num_se_blocks=(0, 0, 0, 0)) -> dict:
    return dict(num_blocks=_DEPTHS, width_factor=width_factor,
                num_conv_branches=num_conv_branches, num_se_blocks=num_se_blocks)


class MobileOne(RepBackbone):
    """MobileOne (Vasu et al., CVPR 2023) with outputs at strides 4/8/16/32.

    The stem is one stride-2 ``3x3`` :class:`MobileOneBlock` (one conv
    branch) to ``min(64, 64 * a_0)`` channels. Stage ``i`` has ``num_blocks[i]``
    pairs of blocks: a depthwise ``3x3`` block (stride 2 in the first pair)
    and a pointwise ``1x1`` block to ``int(base_i * a_i)`` channels, with
    ``base = (64, 128, 256, 512)``. The last ``num_se_blocks[i]`` pairs of a
    stage have SE (S4). The widths, depths and branch counts are those of
    the official ``mobileone.py``, timm's ``mobileone_s0..s4`` and mmpretrain's
    ``MobileOne``, which agree. Fused, the network is a chain of
    depthwise/pointwise convs and ReLUs.

    Args:
        arch: ``'s0'`` ... ``'s4'`` (:attr:`arch_settings`) or a dict with
            ``num_blocks`` and ``width_factor`` (4 values each) and optionally
            ``num_conv_branches`` (an int for all stages) and ``num_se_blocks`` (4 ints).
        in_channels: input image channels.
        norm_cfg: mmcv norm config of every BN, e.g. ``dict(type='SyncBN')``.
        Others: see :class:`~mmrep.models.backbones.base.RepBackbone`.

    Attributes:
        out_channels: the four stage widths, e.g. ``[48, 128, 256, 1024]`` for S0.

    State dict: ``stem.*`` and ``stages.{i}.{2j}`` (depthwise) / ``stages.{i}.{2j+1}``
    (pointwise), each a :class:`MobileOneBlock`.
    """

    arch_settings: Dict[str, dict] = {
        's0': _arch((0.75, 1.0, 1.0, 2.0), num_conv_branches=4),
        's1': _arch((1.5, 1.5, 2.0, 2.5)),
        's2': _arch((1.5, 2.0, 2.5, 4.0)),
        's3': _arch((2.0, 2.5, 3.0, 4.0)),
        's4': _arch((3.0, 3.5, 3.5, 4.0), num_se_blocks=(0, 0, 5, 1)),
    }

    def __init__(self, arch: Union[str, dict] = 's0', in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_cfg: Optional[dict] = dict(type='BN', requires_grad=True),
                 norm_eval: bool = False, with_cp: bool = False, deploy: bool = False,
                 init_cfg=None):
        super().__init__(out_indices=out_indices, frozen_stages=frozen_stages,
                         norm_eval=norm_eval, with_cp=with_cp, deploy=deploy,
                         init_cfg=init_cfg)
        arch = resolve_arch('MobileOne', arch, self.arch_settings, ('num_blocks', 'width_factor'),
                            dict(num_conv_branches=1, num_se_blocks=(0,) * NUM_STAGES),
                            per_stage=('num_blocks', 'width_factor', 'num_se_blocks'),
                            depths='num_blocks')
        if any(not 0 <= se <= n for se, n in zip(arch['num_se_blocks'], arch['num_blocks'])):
            raise ValueError(f'num_se_blocks {arch["num_se_blocks"]} must be within '
                             f'0..num_blocks {arch["num_blocks"]} per stage')
        self.arch = arch
        self.out_channels = [int(base * f) for base, f in zip(_BASE_WIDTHS, arch['width_factor'])]
        block = dict(norm_layer=make_norm_layer(norm_cfg), act_layer=nn.ReLU, deploy=deploy)
        width = min(64, self.out_channels[0])
        self.stem = MobileOneBlock(in_channels, width, 3, stride=2, **block)
        branches = arch['num_conv_branches']
        self.stages = nn.ModuleList()
        for depth, out_width, num_se in zip(arch['num_blocks'], self.out_channels,
                                            arch['num_se_blocks']):
            blocks = []
            for i in range(depth):
                use_se = i >= depth - num_se
                blocks.append(MobileOneBlock(width, width, 3, stride=2 if i == 0 else 1,
                                             groups=width, num_conv_branches=branches,
                                             use_se=use_se, **block))
                blocks.append(MobileOneBlock(width, out_width, 1, num_conv_branches=branches,
                                             use_se=use_se, **block))
                width = out_width
            self.stages.append(nn.Sequential(*blocks))
        self._freeze_stages()
