"""RepViT backbone for detection and segmentation."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

from torch import nn

from mmrep.blocks.base import ConvBN
from mmrep.blocks.repvit import RepViTBlock, RepViTDownsample
from mmrep.models.backbones.base import RepBackbone, make_norm_layer, resolve_arch


def _arch(widths, depths, legacy=False) -> dict:
    return dict(widths=widths, depths=depths, legacy=legacy)


class RepViT(RepBackbone):
    """RepViT (Wang et al., CVPR 2024) with outputs at strides 4/8/16/32.

    A stem of two stride-2 ``3x3`` conv-BNs (GELU between) to ``widths[0]``,
    then four stages. Stage 0 is ``depths[0]`` :class:`RepViTBlock`; stage
    ``i > 0`` is a stride-1 block without SE (the "pre-block"), a
    :class:`RepViTDownsample` to ``widths[i]`` and ``depths[i]`` blocks. The
    blocks of a stage alternate SE on / off, starting with SE. This is
    timm's ``RepVit`` grouping, and its stage ends are the taps of the
    official detection code (``out_indices=[2, 6, 20, 24]`` into the
    official ``features`` list for M1.1).

    The official segmentation code taps the first three stages one block
    later, after the next stage's pre-block (``[3, 7, 21, 24]`` for M1.1):
    ``taps_after_pre_block=True`` does the same, for its ADE20K checkpoints.

    Fused, the token mixers are depthwise ``3x3`` convs and every conv-BN one
    conv with bias; the FFN residuals and SE gates stay.

    Args:
        arch: a name from :attr:`arch_settings` (``'m0.9'``, ``'m1.0'``, ``'m1.1'``,
            ``'m1.5'``, ``'m2.3'``; the first release's ``'m1'``, ``'m2'``, ``'m3'``
            with the legacy token mixer) or a dict with ``widths`` and ``depths``
            (4 ints each) and optionally ``legacy``.
        in_channels: input image channels.
        mlp_ratio: FFN width over the block width.
        taps_after_pre_block: see above.
        norm_cfg: mmcv norm config of every BN, e.g. ``dict(type='SyncBN')``.
        Others: see :class:`~mmrep.models.backbones.base.RepBackbone`.

    Attributes:
        out_channels: the four stage widths, e.g. ``[64, 128, 256, 512]`` for M1.1.

    State dict: ``stem.{0,1}.*``; ``stages.0.{j}`` blocks; ``stages.{i}.0`` the
    pre-block, ``stages.{i}.1`` the downsample, ``stages.{i}.{j+2}`` the blocks.
    """

    arch_settings: Dict[str, dict] = {
        'm0.9': _arch((48, 96, 192, 384), (2, 2, 14, 2)),
        'm1.0': _arch((56, 112, 224, 448), (2, 2, 14, 2)),
        'm1.1': _arch((64, 128, 256, 512), (2, 2, 12, 2)),
        'm1.5': _arch((64, 128, 256, 512), (4, 4, 24, 4)),
        'm2.3': _arch((80, 160, 320, 640), (6, 6, 34, 2)),
        'm1': _arch((48, 96, 192, 384), (2, 2, 14, 2), legacy=True),
        'm2': _arch((64, 128, 256, 512), (2, 2, 12, 2), legacy=True),
        'm3': _arch((64, 128, 256, 512), (4, 4, 18, 2), legacy=True),
    }

    def __init__(self, arch: Union[str, dict] = 'm1.1', in_channels: int = 3,
                 mlp_ratio: float = 2, out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1, taps_after_pre_block: bool = False,
                 norm_cfg: Optional[dict] = dict(type='BN', requires_grad=True),
                 norm_eval: bool = False, with_cp: bool = False, deploy: bool = False,
                 init_cfg=None):
        super().__init__(out_indices=out_indices, frozen_stages=frozen_stages,
                         norm_eval=norm_eval, with_cp=with_cp, deploy=deploy,
                         init_cfg=init_cfg)
        arch = resolve_arch('RepViT', arch, self.arch_settings, ('widths', 'depths'),
                            dict(legacy=False), per_stage=('widths', 'depths'), depths='depths')
        self.arch = arch
        self.taps_after_pre_block = taps_after_pre_block
        self.out_channels = list(arch['widths'])
        norm_layer = make_norm_layer(norm_cfg)
        common = dict(norm_layer=norm_layer, act_layer=nn.GELU, deploy=deploy)
        block = dict(mlp_ratio=mlp_ratio, legacy=arch['legacy'], **common)

        width = arch['widths'][0]
        self.stem = nn.Sequential(
            ConvBN(in_channels, width // 2, 3, 2, **common),
            ConvBN(width // 2, width, 3, 2, norm_layer=norm_layer, deploy=deploy))
        self.stages = nn.ModuleList()
        for i, (out_width, depth) in enumerate(zip(arch['widths'], arch['depths'])):
            blocks = []
            if i > 0:
                blocks.append(RepViTBlock(width, use_se=False, **block))
                blocks.append(RepViTDownsample(width, out_width, mlp_ratio, **common))
            blocks += [RepViTBlock(out_width, use_se=j % 2 == 0, **block) for j in range(depth)]
            self.stages.append(nn.Sequential(*blocks))
            width = out_width
        self._freeze_stages()

    def forward(self, x):
        x = self._run(self.stem, x)
        features = []
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                x = self._run(block, x)
                if i > 0 and j == 0 and self.taps_after_pre_block:
                    features[-1] = x  # the previous stage's tap moves past this pre-block
            features.append(x)
        return tuple(features[i] for i in self.out_indices)
