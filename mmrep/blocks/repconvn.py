"""RepConv without identity (YOLOv7, YOLOv9's RepConvN) and the CSP block built on it. Pure torch.

Wang et al., "YOLOv7: Trainable bag-of-freebies ...", CVPR 2023: RepVGG's
identity branch destroys the residual of ResNet-like blocks and the
concatenation of DenseNet-like ones, so inside such blocks the re-param conv
must have no identity branch. :class:`RepConvN` is that conv (two branches,
always); :class:`RepNBottleneck` and :class:`RepNCSP` are the YOLOv9 blocks
that use it, with every 3x3 conv a :class:`RepConvN`.
"""
from __future__ import annotations

import torch
from torch import nn

from mmrep.blocks.base import ActLayer, ConvBN, NormLayer
from mmrep.blocks.repvgg import RepVGGBlock


class RepConvN(RepVGGBlock):
    """``act(BN(conv3x3(x)) + BN(conv1x1(x)))``, fused to ``act(conv3x3'(x))``.

    A :class:`~mmrep.blocks.repvgg.RepVGGBlock` without identity: exactly two
    branches, even when ``in_channels == out_channels`` and ``stride == 1``
    (YOLOv7's RepConvN), with SiLU by default and no SE.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of both branches.
        groups: groups of both branches.
        act_layer: builds the output activation (SiLU in YOLOv7/v9).
        norm_layer: builds a norm from a channel count (BN, SyncBN, ...).
        deploy: build the fused form (``branch_reparam``) directly.
        quant_friendly: QARepVGG's layout ``act(BN(BN3(conv3x3(x)) + conv1x1(x)))``
            (see :class:`~mmrep.blocks.repvgg.RepVGGBlock`).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1,
                 act_layer: ActLayer = nn.SiLU, norm_layer: NormLayer = nn.BatchNorm2d,
                 deploy: bool = False, quant_friendly: bool = False):
        super().__init__(in_channels, out_channels, stride, groups, norm_layer=norm_layer,
                         act_layer=act_layer, deploy=deploy, use_identity=False,
                         quant_friendly=quant_friendly)


class RepNBottleneck(nn.Module):
    """``x + conv2(conv1(x))`` with two 3x3 :class:`RepConvN` (the residual only when
    ``shortcut`` and ``in_channels == out_channels``).

    YOLOv9's RepNBottleneck has a plain 3x3 conv second; here it is a
    :class:`RepConvN` too, so every 3x3 conv of the block is re-parameterized.
    The residual stays a real addition after fusion: the convs are separated
    by activations.

    Args:
        in_channels, out_channels: block input and output channels.
        shortcut: add the input to the output when the widths agree.
        expansion: hidden width is ``int(out_channels * expansion)``.
        act_layer, norm_layer, deploy, quant_friendly: as :class:`RepConvN`.
    """

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool = True,
                 expansion: float = 1.0, act_layer: ActLayer = nn.SiLU,
                 norm_layer: NormLayer = nn.BatchNorm2d, deploy: bool = False,
                 quant_friendly: bool = False):
        super().__init__()
        hidden = int(out_channels * expansion)
        conv = dict(act_layer=act_layer, norm_layer=norm_layer, deploy=deploy,
                    quant_friendly=quant_friendly)
        self.conv1 = RepConvN(in_channels, hidden, **conv)
        self.conv2 = RepConvN(hidden, out_channels, **conv)
        self.add_identity = shortcut and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return x + out if self.add_identity else out


class RepNCSP(nn.Module):
    """Cross-stage-partial block of :class:`RepNBottleneck` (YOLOv9's RepNCSP).

    ``final_conv(cat(blocks(main_conv(x)), short_conv(x)))``: two 1x1 ConvBN+act
    split the input into a main path of ``num_blocks`` bottlenecks and a
    shortcut path; a 1x1 ConvBN+act fuses their concatenation.

    Args:
        in_channels, out_channels: block input and output channels.
        num_blocks: bottlenecks on the main path.
        shortcut: residual inside each bottleneck.
        expansion: each path has ``int(out_channels * expansion)`` channels.
        act_layer, norm_layer, deploy: as :class:`RepConvN`.
        quant_friendly: QARepVGG's layout in every :class:`RepConvN` (the 1x1
            ConvBNs are plain conv + BN already).
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 1,
                 shortcut: bool = True, expansion: float = 0.5, act_layer: ActLayer = nn.SiLU,
                 norm_layer: NormLayer = nn.BatchNorm2d, deploy: bool = False,
                 quant_friendly: bool = False):
        super().__init__()
        hidden = int(out_channels * expansion)
        layer = dict(act_layer=act_layer, norm_layer=norm_layer, deploy=deploy)
        self.main_conv = ConvBN(in_channels, hidden, 1, **layer)
        self.short_conv = ConvBN(in_channels, hidden, 1, **layer)
        self.blocks = nn.Sequential(*(RepNBottleneck(hidden, hidden, shortcut,
                                                     quant_friendly=quant_friendly, **layer)
                                      for _ in range(num_blocks)))
        self.final_conv = ConvBN(2 * hidden, out_channels, 1, **layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(torch.cat([self.blocks(self.main_conv(x)), self.short_conv(x)], 1))
