"""The RepVGG block: 3x3 + 1x1 (+ identity) branches that fuse into one 3x3 conv. Pure torch.

Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", CVPR 2021.
The same block without identity is YOLOv7/v9's RepConvN
(:mod:`mmrep.blocks.repconvn`).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from mmrep import fusion
from mmrep.blocks.base import ActLayer, ConvBN, NormLayer, ReparamModule, conv_from
from mmrep.blocks.se import SqueezeExcite

# The official RepVGG-D2se squeezes every block's channels by 16.
SE_REDUCTION = 16


class RepVGGBlock(ReparamModule):
    """``act(SE(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x)))``, fused to ``act(SE(conv3x3'(x)))``.

    The identity branch exists only when ``use_identity`` and
    ``in_channels == out_channels`` and ``stride == 1``. All branches share
    stride and groups, so their sum is a single 3x3 conv with bias.
    The optional SE is not linear: it stays as it is after fusion.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the 3x3 and 1x1 branches.
        groups: groups of the 3x3 and 1x1 branches.
        use_se: gate the branch sum with squeeze-excitation (RepVGG-D2se).
        norm_layer: builds a norm from a channel count (BN, SyncBN, ...).
        act_layer: builds the output activation.
        deploy: build the fused form (``branch_reparam``) directly.
        use_identity: add the identity branch where the shapes allow it
            (False: YOLOv7's RepConvN, two branches always).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1,
                 use_se: bool = False, norm_layer: NormLayer = nn.BatchNorm2d,
                 act_layer: ActLayer = nn.ReLU, deploy: bool = False,
                 use_identity: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.groups = groups
        self.deploy = deploy
        if deploy:
            self.branch_reparam = nn.Conv2d(in_channels, out_channels, 3, stride, 1,
                                            groups=groups, bias=True)
        else:
            has_identity = use_identity and in_channels == out_channels and stride == 1
            self.branch_3x3 = ConvBN(in_channels, out_channels, 3, stride, groups=groups,
                                     norm_layer=norm_layer)
            self.branch_1x1 = ConvBN(in_channels, out_channels, 1, stride, padding=0,
                                     groups=groups, norm_layer=norm_layer)
            self.branch_identity: Optional[nn.Module] = (
                norm_layer(in_channels) if has_identity else None)
        # max(1, .): the official //16 would give an empty bottleneck below 16 channels
        self.se: Optional[nn.Module] = (
            SqueezeExcite(out_channels, max(1, out_channels // SE_REDUCTION)) if use_se else None)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            out = self.branch_reparam(x)
        else:
            out = self.branch_3x3(x) + self.branch_1x1(x)
            if self.branch_identity is not None:
                out = out + self.branch_identity(x)
        if self.se is not None:
            out = self.se(out)
        return self.act(out)

    def fused_kernel_bias(self) -> fusion.KernelBias:
        """The ``(W, b)`` of the branch sum (before SE and activation)."""
        if self.deploy:
            return self.branch_reparam.weight, self.branch_reparam.bias
        branches = [self.branch_3x3.fused_kernel_bias(), self.branch_1x1.fused_kernel_bias()]
        if self.branch_identity is not None:
            branches.append(fusion.fold_bn_module(self.branch_identity, self.in_channels,
                                                  self.groups))
        return fusion.sum_branches(branches)

    def reparameterize(self) -> None:
        if self.deploy:
            return
        kernel, bias = self.fused_kernel_bias()
        self.branch_reparam = conv_from(self.branch_3x3.conv, kernel, bias)
        del self.branch_3x3, self.branch_1x1, self.branch_identity
        self.deploy = True
