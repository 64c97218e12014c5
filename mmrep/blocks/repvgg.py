"""The RepVGG block: 3x3 + 1x1 (+ identity) branches that fuse into one 3x3 conv. Pure torch.

Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", CVPR 2021.
The same block without identity is YOLOv7/v9's RepConvN
(:mod:`mmrep.blocks.repconvn`), and with ``quant_friendly=True`` it is the
block of QARepVGG (Chu et al., "Make RepVGG Greater Again: A
Quantization-aware Approach", arXiv 2212.01593).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from mmrep import fusion
from mmrep.blocks.base import (ActLayer, ConvBN, NormLayer, ReparamModule, branch_kernel_bias,
                               conv_from)
from mmrep.blocks.se import SqueezeExcite

# The official RepVGG-D2se squeezes every block's channels by 16.
SE_REDUCTION = 16


class RepVGGBlock(ReparamModule):
    """``act(SE(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x)))``, fused to ``act(SE(conv3x3'(x)))``.

    The identity branch exists only when ``use_identity`` and
    ``in_channels == out_channels`` and ``stride == 1``. All branches share
    stride and groups, so their sum is a single 3x3 conv with bias.
    The optional SE is not linear: it stays as it is after fusion.

    With ``quant_friendly=True`` the block is QARepVGG's:
    ``act(SE(BN(BN3(conv3x3(x)) + conv1x1(x) + x)))``, i.e. the 3x3 conv keeps
    its BN, the 1x1 conv (no bias) and the identity have none, and one BN
    follows the sum. The per-branch BNs of the plain block let the fused
    kernel's channels take very different ranges, which per-tensor INT8
    activations cannot represent; the post-sum BN keeps the output
    distribution in one place. It fuses the same way: the branches are
    summed, then the post-sum BN is folded into the result. (YOLOv6 applies
    that BN after the SE, where it cannot fold; here it comes before the SE.)

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
        quant_friendly: QARepVGG's branch layout (see above). The fused form
            is the same as the plain block's.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1,
                 use_se: bool = False, norm_layer: NormLayer = nn.BatchNorm2d,
                 act_layer: ActLayer = nn.ReLU, deploy: bool = False,
                 use_identity: bool = True, quant_friendly: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.groups = groups
        self.deploy = deploy
        self.quant_friendly = quant_friendly
        if deploy:
            self.branch_reparam = nn.Conv2d(in_channels, out_channels, 3, stride, 1,
                                            groups=groups, bias=True)
        else:
            has_identity = use_identity and in_channels == out_channels and stride == 1
            self.branch_3x3 = ConvBN(in_channels, out_channels, 3, stride, groups=groups,
                                     norm_layer=norm_layer)
            if quant_friendly:
                self.branch_1x1 = nn.Conv2d(in_channels, out_channels, 1, stride, 0,
                                            groups=groups, bias=False)
                self.branch_identity: Optional[nn.Module] = (
                    nn.Identity() if has_identity else None)
                self.post_norm: Optional[nn.Module] = norm_layer(out_channels)
            else:
                self.branch_1x1 = ConvBN(in_channels, out_channels, 1, stride, padding=0,
                                         groups=groups, norm_layer=norm_layer)
                self.branch_identity = norm_layer(in_channels) if has_identity else None
                self.post_norm = None
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
            if self.post_norm is not None:
                out = self.post_norm(out)
        if self.se is not None:
            out = self.se(out)
        return self.act(out)

    def fused_kernel_bias(self) -> fusion.KernelBias:
        """The ``(W, b)`` of the branch sum and post-sum BN (before SE and activation)."""
        if self.deploy:
            return self.branch_reparam.weight, self.branch_reparam.bias
        branches = [self.branch_3x3, self.branch_1x1]
        if self.branch_identity is not None:
            branches.append(self.branch_identity)
        like = self.branch_3x3.conv.weight
        kernel, bias = fusion.sum_branches(
            branch_kernel_bias(b, self.in_channels, self.groups, like) for b in branches)
        if self.post_norm is not None:  # the post-sum BN folds last, onto the summed conv
            kernel, bias = fusion.fold_bn(kernel, bias, self.post_norm)
        return kernel, bias

    def reparameterize(self) -> None:
        if self.deploy:
            return
        kernel, bias = self.fused_kernel_bias()
        self.branch_reparam = conv_from(self.branch_3x3.conv, kernel, bias)
        del self.branch_3x3, self.branch_1x1, self.branch_identity, self.post_norm
        self.deploy = True
