"""RepGhost blocks (Chen et al., "RepGhost: A Hardware-Efficient Ghost Module
via Re-parameterization", arXiv:2211.06088). Pure torch.

A RepGhost module replaces GhostNet's channel concatenation by an addition:
``act(DW(x1) + BN(x1))`` with ``x1 = primary(x)``. The BN on the identity
path is a depthwise conv too, so after fusion the module is two plain
convs: the primary ``1x1`` and one depthwise ``k x k``.

Unlike the official code and timm (which keep the BNs of the primary conv,
the bottleneck's depthwise conv and the shortcut), every conv-BN pair here
is built from :class:`~mmrep.blocks.base.ConvBN`, so a fused block holds no
BatchNorm at all.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmrep import fusion
from mmrep.blocks.base import (ActLayer, ConvBN, NormLayer, ReparamModule, conv_from,
                               make_divisible)


class HardSigmoidSE(nn.Module):
    """Squeeze-and-excitation with a hard-sigmoid gate, as in GhostNet/RepGhostNet.

    ``x * hard_sigmoid(expand(act(reduce(mean_hw(x)))))`` where
    ``hard_sigmoid(t) = relu6(t + 3) / 6``. Pooling is global and adaptive,
    so any input size (square or not) works. Not fused: it depends on the input.
    """

    def __init__(self, channels: int, reduced_channels: int, act_layer: ActLayer = nn.ReLU):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced_channels, 1)
        self.act = act_layer()
        self.conv_expand = nn.Conv2d(reduced_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv_expand(self.act(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * F.hardsigmoid(gate)


class RepGhostModule(ReparamModule):
    """``act(cheap(x1) + fusion_bn(x1))`` with ``x1 = primary(x)``.

    ``primary`` is conv + BN (+ act if ``relu``), ``cheap`` a depthwise
    ``dw_size`` conv + BN without activation, ``fusion_bn`` a BN on the
    identity path. Fused: ``act(cheap'(primary'(x)))``, two convs with bias;
    the identity BN is a ``1x1`` depthwise kernel added into the centre of
    the cheap kernel.

    Args:
        in_channels, out_channels: channels of the input and of ``x1`` / output.
        kernel_size, stride: of the primary conv (``1`` and ``1`` in RepGhostNet).
        dw_size: kernel size of the cheap depthwise conv.
        relu: use ``act_layer`` after the primary conv and at the output.
        norm_layer, act_layer: build the norms and the activation.
        deploy: build the fused form directly.

    State dict: training ``primary.{conv,bn}``, ``cheap.{conv,bn}``,
    ``fusion_bn``; deploy ``primary.conv.{weight,bias}``, ``cheap.{weight,bias}``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 dw_size: int = 3, stride: int = 1, relu: bool = True,
                 norm_layer: NormLayer = nn.BatchNorm2d, act_layer: ActLayer = nn.ReLU,
                 deploy: bool = False):
        super().__init__()
        self.deploy = deploy
        act = act_layer if relu else None
        self.primary = ConvBN(in_channels, out_channels, kernel_size, stride,
                              norm_layer=norm_layer, act_layer=act, deploy=deploy)
        if deploy:
            self.cheap = nn.Conv2d(out_channels, out_channels, dw_size, padding=dw_size // 2,
                                   groups=out_channels)
        else:
            self.cheap = ConvBN(out_channels, out_channels, dw_size, groups=out_channels,
                                norm_layer=norm_layer)
            self.fusion_bn = norm_layer(out_channels)
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.primary(x)
        if self.deploy:
            return self.act(self.cheap(x))
        return self.act(self.cheap(x) + self.fusion_bn(x))

    def reparameterize(self) -> None:
        if self.deploy:
            return
        # No-op when reparameterize_model already fused it (children first).
        self.primary.reparameterize()
        channels = self.fusion_bn.num_features
        identity = fusion.fold_bn_module(self.fusion_bn, channels, groups=channels)
        kernel, bias = fusion.sum_branches([self.cheap.fused_kernel_bias(), identity])
        self.cheap = conv_from(self.cheap.conv, kernel, bias)
        del self.fusion_bn
        self.deploy = True


class RepGhostBottleneck(nn.Module):
    """RepGhostNet's inverted residual: ``ghost2(SE(DW(ghost1(x)))) + shortcut(x)``.

    ``ghost1`` expands to ``mid_channels`` with ReLU; a depthwise
    ``dw_kernel_size`` conv + BN (no act) downsamples when ``stride > 1``;
    the optional SE reduces to ``make_divisible(mid_channels * se_ratio, 4)``;
    ``ghost2`` projects to ``out_channels`` without activation. The shortcut
    is the identity when shapes allow, else depthwise ``k x k`` conv + BN
    then ``1x1`` conv + BN (no act). There is no activation after the sum.

    A container: every conv-BN pair is a :class:`ConvBN` or
    :class:`RepGhostModule`, fused by :func:`mmrep.reparameterize_model`.

    State dict: ``ghost1.*``, ``conv_dw.{conv,bn}`` (stride > 1),
    ``se.conv_reduce``, ``se.conv_expand`` (SE), ``ghost2.*``,
    ``shortcut.{0,1}.{conv,bn}`` (projection); fused, every ``bn`` goes and
    each ``conv`` gets a bias (see :class:`RepGhostModule` for ``ghost*``).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int,
                 dw_kernel_size: int = 3, stride: int = 1, se_ratio: float = 0.,
                 norm_layer: NormLayer = nn.BatchNorm2d, act_layer: ActLayer = nn.ReLU,
                 deploy: bool = False):
        super().__init__()
        common = dict(norm_layer=norm_layer, deploy=deploy)
        self.ghost1 = RepGhostModule(in_channels, mid_channels, relu=True,
                                     act_layer=act_layer, **common)
        self.conv_dw = (ConvBN(mid_channels, mid_channels, dw_kernel_size, stride,
                               groups=mid_channels, **common)
                        if stride > 1 else nn.Identity())
        self.se = (HardSigmoidSE(mid_channels, make_divisible(mid_channels * se_ratio, 4),
                                 act_layer)
                   if se_ratio and se_ratio > 0 else nn.Identity())
        self.ghost2 = RepGhostModule(mid_channels, out_channels, relu=False, **common)
        if in_channels == out_channels and stride == 1:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                ConvBN(in_channels, in_channels, dw_kernel_size, stride,
                       groups=in_channels, **common),
                ConvBN(in_channels, out_channels, 1, **common))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ghost2(self.se(self.conv_dw(self.ghost1(x))))
        return out + self.shortcut(x)
