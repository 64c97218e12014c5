"""The MobileOne block: k parallel conv-BN branches, a 1x1 "scale" branch and a BN identity,
fused into one conv. Pure torch.

Vasu et al., "MobileOne: An Improved One millisecond Mobile Backbone", CVPR 2023.
It is RepVGG's block generalised to ``k`` conv branches of the same kernel
size, used both as a depthwise ``3x3`` block (``groups = C``) and as a
pointwise ``1x1`` block; the fusion is the same sum of BN-folded kernels
(:func:`mmrep.fusion.sum_branches` of :func:`~mmrep.fusion.fold_bn` and
:func:`~mmrep.fusion.fold_bn_module`).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from mmrep import fusion
from mmrep.blocks.base import (ActLayer, ConvBN, NormLayer, ReparamModule, branch_kernel_bias,
                               conv_from)
from mmrep.blocks.se import SqueezeExcite

# The official SEBlock reduces by rd_ratio 0.0625: int(C * 0.0625) = C // 16.
SE_REDUCTION = 16


class MobileOneBlock(ReparamModule):
    """``act(SE(sum_k BN_k(conv_k(x)) + BN(conv1x1(x)) + BN(x)))``, fused to ``act(SE(conv'(x)))``.

    The ``1x1`` scale branch exists only for ``kernel_size > 1``, the BN
    identity only when ``in_channels == out_channels`` and ``stride == 1``.
    Every branch has the block's stride and groups, so the sum is one
    ``kernel_size`` conv with bias. The SE (MobileOne-S4) is not linear and
    stays after fusion.

    Args:
        in_channels, out_channels: channels of the input and output.
        kernel_size: of the ``num_conv_branches`` conv branches (3 or 1 in MobileOne).
        stride, groups: of every branch (``groups = in_channels``: depthwise).
        num_conv_branches: parallel conv-BN branches (4 in MobileOne-S0, else 1).
        use_se: gate the branch sum with squeeze-excitation (``C // 16`` wide).
        norm_layer: builds the norms from a channel count (BN, SyncBN, ...).
        act_layer: builds the output activation.
        deploy: build the fused form (``branch_reparam``) directly.

    State dict: training ``branch_convs.{i}.{conv,bn}``, ``branch_scale.{conv,bn}``,
    ``branch_identity``, ``se.{down,up}``; deploy ``branch_reparam.{weight,bias}``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, groups: int = 1, num_conv_branches: int = 1,
                 use_se: bool = False, norm_layer: NormLayer = nn.BatchNorm2d,
                 act_layer: ActLayer = nn.ReLU, deploy: bool = False):
        super().__init__()
        if num_conv_branches < 1:
            raise ValueError(f'num_conv_branches must be >= 1, got {num_conv_branches}')
        if kernel_size % 2 != 1:
            raise ValueError(f'kernel_size must be odd, got {kernel_size}')
        self.in_channels = in_channels
        self.groups = groups
        self.deploy = deploy
        if deploy:
            self.branch_reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                                            kernel_size // 2, groups=groups, bias=True)
        else:
            self.branch_convs = nn.ModuleList(
                ConvBN(in_channels, out_channels, kernel_size, stride, groups=groups,
                       norm_layer=norm_layer) for _ in range(num_conv_branches))
            self.branch_scale: Optional[ConvBN] = (
                ConvBN(in_channels, out_channels, 1, stride, padding=0, groups=groups,
                       norm_layer=norm_layer) if kernel_size > 1 else None)
            self.branch_identity: Optional[nn.Module] = (
                norm_layer(in_channels) if in_channels == out_channels and stride == 1
                else None)
        self.se: Optional[nn.Module] = (
            SqueezeExcite(out_channels, max(1, out_channels // SE_REDUCTION)) if use_se else None)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            out = self.branch_reparam(x)
        else:
            out = sum(branch(x) for branch in self.branch_convs)
            if self.branch_scale is not None:
                out = out + self.branch_scale(x)
            if self.branch_identity is not None:
                out = out + self.branch_identity(x)
        if self.se is not None:
            out = self.se(out)
        return self.act(out)

    def fused_kernel_bias(self) -> fusion.KernelBias:
        """The ``(W, b)`` of the branch sum (before SE and activation)."""
        if self.deploy:
            return self.branch_reparam.weight, self.branch_reparam.bias
        branches = [*self.branch_convs, self.branch_scale, self.branch_identity]
        like = self.branch_convs[0].conv.weight
        return fusion.sum_branches(branch_kernel_bias(b, self.in_channels, self.groups, like)
                                   for b in branches if b is not None)

    def reparameterize(self) -> None:
        if self.deploy:
            return
        kernel, bias = self.fused_kernel_bias()
        self.branch_reparam = conv_from(self.branch_convs[0].conv, kernel, bias)
        del self.branch_convs, self.branch_scale, self.branch_identity
        self.deploy = True
