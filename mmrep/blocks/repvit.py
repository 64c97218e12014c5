"""RepViT blocks (Wang et al., "RepViT: Revisiting Mobile CNN From ViT Perspective", CVPR 2024).
Pure torch.

A RepViT block is a MobileNetV3-style block rearranged like a ViT block: a
depthwise token mixer (:class:`RepVGGDW`, re-parameterized), an optional SE,
then a ``1x1`` conv FFN with a residual (:class:`RepViTFFN`). Fused, the
token mixer is one depthwise ``3x3`` conv and every conv-BN pair one conv
with bias; the FFN residual stays (it wraps a GELU).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from mmrep.blocks.base import ActLayer, ConvBN, NormLayer, make_divisible
from mmrep.blocks.repvgg import RepVGGBlock
from mmrep.blocks.se import SqueezeExcite

# timm's SqueezeExcite(C, 0.25) as the official code uses it: C / 4 rounded to a multiple of 8.
SE_RATIO = 0.25
SE_DIVISOR = 8


def se_channels(channels: int) -> int:
    """The SE bottleneck width of a RepViT block: ``C / 4`` rounded to a multiple of 8."""
    return make_divisible(channels * SE_RATIO, SE_DIVISOR, round_limit=0)


class RepVGGDW(RepVGGBlock):
    """RepViT's token mixer, ``BN(BN3(dw3x3(x)) + dw1x1(x) + x)``, fused to one depthwise conv.

    The ``3x3`` depthwise conv has a BN, the ``1x1`` depthwise conv a bias and
    no BN, the identity nothing; one BN follows the sum: the branches of
    QARepVGG (:class:`~mmrep.blocks.repvgg.RepVGGBlock` with
    ``quant_friendly=True``) at depthwise level, with a biased ``1x1`` and no
    activation. Fusion sums the branch kernels and folds the post-sum BN last.

    ``legacy=True`` is the first RepViT release (archs m1/m2/m3, timm
    ``legacy=True``): ``BN3(dw3x3(x)) + BN1(dw1x1(x)) + x``, RepVGG's block
    with a plain identity and no BN after the sum.

    State dict: training ``branch_3x3.{conv,bn}``, ``branch_1x1.{weight,bias}``
    (legacy ``branch_1x1.{conv,bn}``), ``post_norm``; deploy
    ``branch_reparam.{weight,bias}``.
    """

    def __init__(self, channels: int, legacy: bool = False,
                 norm_layer: NormLayer = nn.BatchNorm2d, deploy: bool = False):
        super().__init__(channels, channels, groups=channels, norm_layer=norm_layer,
                         act_layer=nn.Identity, deploy=deploy, quant_friendly=not legacy)
        self.legacy = legacy
        if deploy:
            return
        if legacy:  # RepVGG's branches, but the identity has no BN
            self.branch_identity = nn.Identity()
        else:  # QARepVGG's branches, but the 1x1 conv has a bias
            self.branch_1x1 = nn.Conv2d(channels, channels, 1, groups=channels, bias=True)


class RepViTFFN(nn.Module):
    """``conv2(act(conv1(x)))``: two ``1x1`` conv-BN pairs, ``C -> hidden -> C`` (no residual here).

    State dict: ``conv1.{conv,bn}``, ``conv2.{conv,bn}``; fused, each ``bn`` is
    folded into its conv.
    """

    def __init__(self, channels: int, hidden_channels: int,
                 norm_layer: NormLayer = nn.BatchNorm2d, act_layer: ActLayer = nn.GELU,
                 deploy: bool = False):
        super().__init__()
        self.conv1 = ConvBN(channels, hidden_channels, 1, padding=0, norm_layer=norm_layer,
                            act_layer=act_layer, deploy=deploy)
        self.conv2 = ConvBN(hidden_channels, channels, 1, padding=0, norm_layer=norm_layer,
                            deploy=deploy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class RepViTBlock(nn.Module):
    """``y = SE(RepVGGDW(x))``, then ``y + FFN(y)``: the stride-1 RepViT block.

    Args:
        channels: input (= output) channels.
        mlp_ratio: FFN width over ``channels``.
        use_se: squeeze-excitation after the token mixer (``C / 4`` wide, see :func:`se_channels`).
        legacy: the first release's token mixer (see :class:`RepVGGDW`).
        norm_layer, act_layer, deploy: as the other blocks (``act_layer`` is the FFN's).

    State dict: ``token_mixer.*``, ``se.{down,up}``, ``channel_mixer.*``.
    """

    def __init__(self, channels: int, mlp_ratio: float = 2, use_se: bool = False,
                 legacy: bool = False, norm_layer: NormLayer = nn.BatchNorm2d,
                 act_layer: ActLayer = nn.GELU, deploy: bool = False):
        super().__init__()
        self.token_mixer = RepVGGDW(channels, legacy, norm_layer, deploy)
        self.se: Optional[nn.Module] = (
            SqueezeExcite(channels, se_channels(channels)) if use_se else None)
        self.channel_mixer = RepViTFFN(channels, int(channels * mlp_ratio), norm_layer,
                                       act_layer, deploy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token_mixer(x)
        if self.se is not None:
            x = self.se(x)
        return x + self.channel_mixer(x)


class RepViTDownsample(nn.Module):
    """RepViT's stride-2 block: ``y = pw(dw_s2(x))``, then ``y + FFN(y)``.

    ``spatial_downsample`` is a depthwise ``3x3`` stride-2 conv-BN, ``channel_downsample``
    a ``1x1`` conv-BN to ``out_channels``. (timm's ``RepVitDownsample`` also
    holds the stride-1 block before them, its ``pre_block``; mmrep keeps that
    block in the stage, where a feature tap may follow it.)

    State dict: ``spatial_downsample.{conv,bn}``, ``channel_downsample.{conv,bn}``, ``ffn.*``.
    """

    def __init__(self, in_channels: int, out_channels: int, mlp_ratio: float = 2,
                 norm_layer: NormLayer = nn.BatchNorm2d, act_layer: ActLayer = nn.GELU,
                 deploy: bool = False):
        super().__init__()
        self.spatial_downsample = ConvBN(in_channels, in_channels, 3, 2, groups=in_channels,
                                         norm_layer=norm_layer, deploy=deploy)
        self.channel_downsample = ConvBN(in_channels, out_channels, 1, padding=0,
                                         norm_layer=norm_layer, deploy=deploy)
        self.ffn = RepViTFFN(out_channels, int(out_channels * mlp_ratio), norm_layer,
                             act_layer, deploy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.channel_downsample(self.spatial_downsample(x))
        return x + self.ffn(x)
