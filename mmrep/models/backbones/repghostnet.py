"""RepGhostNet as a four-stage detection / segmentation backbone."""
from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from mmrep.blocks.base import ConvBN
from mmrep.blocks.repghost import RepGhostBottleneck, make_divisible
from mmrep.models.backbones.base import RepBackbone, check_choice, make_norm_layer


class RepGhostNet(RepBackbone):
    """RepGhostNet (Chen et al., arXiv:2211.06088) without its classification head.

    A ``3x3`` stride-2 conv + BN + ReLU stem, then 16 :class:`RepGhostBottleneck`
    blocks grouped into four stages that end at strides 4/8/16/32. The
    official network's final ``1x1`` conv to ``960 * w`` channels, pooling
    and classifier belong to the ImageNet head and are left out.

    Stage ``i`` block ``j`` corresponds to the official / timm blocks as
    ``stages.0.{0,1,2}`` = ``blocks.{0,1,2}.0``, ``stages.1.{0,1}`` =
    ``blocks.{3,4}.0``, ``stages.2.0`` = ``blocks.5.0``, ``stages.2.{1..5}`` =
    ``blocks.6.{0..4}``, ``stages.3.0`` = ``blocks.7.0`` and
    ``stages.3.{1..4}`` = ``blocks.8.{0..3}``; the stem is ``conv_stem`` + ``bn1``.
    (timm's ``feature_info`` taps the first, stride-2 block of each group
    instead of the stage ends used here.)

    Args:
        widen_factor: channel multiplier, one of :attr:`WIDEN_FACTORS`; all
            channels are ``make_divisible(c * widen_factor, 4)``.
        in_channels: channels of the input image.
        norm_cfg: mmcv norm config of every BN, e.g. ``dict(type='SyncBN')``.
        Others: see :class:`~mmrep.models.backbones.base.RepBackbone`.

    Attributes:
        out_channels: channels of the four stage outputs (24/40/112/160 at 1.0x).
    """

    #: The width multipliers of the official RepGhostNet models.
    WIDEN_FACTORS = (0.5, 0.58, 0.8, 1.0, 1.11, 1.3, 1.5, 2.0)

    # Per stage: (dw kernel, expanded channels, out channels, SE ratio, stride).
    ARCH = (
        ((3, 8, 16, 0, 1), (3, 24, 24, 0, 2), (3, 36, 24, 0, 1)),
        ((5, 36, 40, 0.25, 2), (5, 60, 40, 0.25, 1)),
        ((3, 120, 80, 0, 2), (3, 100, 80, 0, 1), (3, 120, 80, 0, 1), (3, 120, 80, 0, 1),
         (3, 240, 112, 0.25, 1), (3, 336, 112, 0.25, 1)),
        ((5, 336, 160, 0.25, 2), (5, 480, 160, 0, 1), (5, 480, 160, 0.25, 1),
         (5, 480, 160, 0, 1), (5, 480, 160, 0.25, 1)),
    )
    STEM_CHANNELS = 16

    def __init__(self, widen_factor: float = 1.0, in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_cfg: Optional[dict] = dict(type='BN'), norm_eval: bool = False,
                 with_cp: bool = False, deploy: bool = False, init_cfg=None):
        super().__init__(out_indices=out_indices, frozen_stages=frozen_stages,
                         norm_eval=norm_eval, with_cp=with_cp, deploy=deploy,
                         init_cfg=init_cfg)
        check_choice('widen_factor', widen_factor, self.WIDEN_FACTORS)
        self.widen_factor = widen_factor
        norm_layer = make_norm_layer(norm_cfg)

        def width(channels: int) -> int:
            return make_divisible(channels * widen_factor, 4)

        channels = width(self.STEM_CHANNELS)
        self.stem = ConvBN(in_channels, channels, 3, stride=2, norm_layer=norm_layer,
                           act_layer=nn.ReLU, deploy=deploy)
        stages = []
        for stage_arch in self.ARCH:
            blocks = []
            for kernel, mid, out, se_ratio, stride in stage_arch:
                blocks.append(RepGhostBottleneck(
                    channels, width(mid), width(out), kernel, stride, se_ratio,
                    norm_layer=norm_layer, deploy=deploy))
                channels = width(out)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(width(stage_arch[-1][2]) for stage_arch in self.ARCH)
        self._freeze_stages()
