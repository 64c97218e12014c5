"""RepLKNet blocks (Ding et al., "Scaling Up Your Kernels to 31x31: Revisiting
Large Kernel Design in CNNs", CVPR 2022, arXiv:2203.06717). Pure torch.

A RepLKNet stage alternates two pre-norm residual blocks:

* :class:`RepLKBlock`: ``x + DP(pw2(ReLU(LK(pw1(BN(x))))))``, where ``LK`` is a
  depthwise large kernel with a parallel small kernel
  (:class:`ReparamLargeKernelConv`);
* :class:`ConvFFN`: ``x + DP(pw2(GELU(pw1(BN(x)))))``.

Fusion goes further than the official ``merge_kernel`` (which only merges the
small kernel): every conv-BN pair is folded, and each pre-norm is folded into
the ``1x1`` conv that follows it, which is exact because a ``1x1`` conv has
no zero padding. A fused block holds no BatchNorm at all.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from mmrep import fusion
from mmrep.blocks.base import ActLayer, ConvBN, NormLayer, ReparamModule, conv_from


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch for a random subset of samples.

    While training, each sample's branch is kept with probability
    ``1 - drop_prob`` and then scaled by ``1 / (1 - drop_prob)``, so its
    expectation is unchanged; in eval mode it is the identity.
    """

    def __init__(self, drop_prob: float = 0.):
        super().__init__()
        if not 0. <= drop_prob < 1.:
            raise ValueError(f'drop_prob must be in [0, 1), got {drop_prob}')
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.:
            return x
        keep = 1. - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob:.3f}'


class ReparamLargeKernelConv(ReparamModule):
    """Depthwise ``K x K`` conv + BN plus a parallel depthwise ``k x k`` conv + BN.

    Fused into one depthwise ``K x K`` conv with bias: the BN-folded small
    kernel is zero-padded to ``K x K`` and added to the BN-folded large one.
    Both branches use "same" padding and the same stride, so their centres
    line up for any stride and input size.

    Args:
        channels: input = output channels (the conv is depthwise).
        kernel_size: the large kernel ``K`` (odd).
        stride: of both branches.
        small_kernel: the parallel small kernel ``k`` (odd, ``k <= K``), or
            None for the large branch alone (RepLKNet-XL).
        norm_layer: builds the norms.
        deploy: build the fused form directly.

    State dict: training ``lkb_origin.{conv,bn}`` and ``small_conv.{conv,bn}``;
    deploy ``lkb_reparam.{weight,bias}``.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1,
                 small_kernel: Optional[int] = 5, norm_layer: NormLayer = nn.BatchNorm2d,
                 deploy: bool = False):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f'kernel_size must be odd, got {kernel_size}')
        if small_kernel is not None and (small_kernel % 2 != 1 or small_kernel > kernel_size):
            raise ValueError(f'small_kernel must be odd and at most kernel_size ({kernel_size}), '
                             f'got {small_kernel}')
        self.deploy = deploy
        if deploy:
            self.lkb_reparam = nn.Conv2d(channels, channels, kernel_size, stride,
                                         kernel_size // 2, groups=channels)
            return
        self.lkb_origin = ConvBN(channels, channels, kernel_size, stride, groups=channels,
                                 norm_layer=norm_layer)
        self.small_conv = None
        if small_kernel is not None:
            self.small_conv = ConvBN(channels, channels, small_kernel, stride, groups=channels,
                                     norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return self.lkb_reparam(x)
        out = self.lkb_origin(x)
        if self.small_conv is not None:
            out = out + self.small_conv(x)
        return out

    def fused_kernel_bias(self) -> fusion.KernelBias:
        if self.deploy:
            return self.lkb_reparam.weight, self.lkb_reparam.bias
        branches = [self.lkb_origin, self.small_conv]
        return fusion.sum_branches(b.fused_kernel_bias() for b in branches if b is not None)

    def reparameterize(self) -> None:
        if self.deploy:
            return
        kernel, bias = self.fused_kernel_bias()
        self.lkb_reparam = conv_from(self.lkb_origin.conv, kernel, bias)
        del self.lkb_origin, self.small_conv
        self.deploy = True


class _PreNormResidual(ReparamModule):
    """``x + drop_path(body(pre_norm(x)))`` whose body starts with the 1x1 ConvBN ``pw1``.

    Fusion fuses the children and folds the pre-norm into ``pw1``.
    Subclasses set ``norm_name`` (the official attribute name of the
    pre-norm, kept for checkpoint compatibility) and implement ``body``.
    """

    norm_name: str
    pw1: ConvBN

    def body(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.deploy else getattr(self, self.norm_name)(x)
        return x + self.drop_path(self.body(out))

    def reparameterize(self) -> None:
        if self.deploy:
            return
        # No-ops when reparameterize_model already fused them (children first).
        for child in self.children():
            if isinstance(child, ReparamModule):
                child.reparameterize()
        kernel, bias = fusion.fold_preceding_bn(getattr(self, self.norm_name),
                                                *self.pw1.fused_kernel_bias())
        self.pw1.conv = conv_from(self.pw1.conv, kernel, bias)
        delattr(self, self.norm_name)
        self.deploy = True


class RepLKBlock(_PreNormResidual):
    """RepLKNet's large-kernel block: ``x + DP(pw2(act(LK(pw1(BN(x))))))``.

    ``pw1`` is a ``1x1`` conv + BN + act to ``dw_channels``, ``LK`` a
    :class:`ReparamLargeKernelConv`, ``pw2`` a ``1x1`` conv + BN back to
    ``in_channels``; ``act`` is ReLU as in the official code. Fused:
    ``x + pw2'(act(LK'(act(pw1'(x)))))``, three convs with bias.

    Args:
        in_channels: channels of the block input and output.
        dw_channels: channels of the depthwise large-kernel conv.
        block_lk_size: its kernel size; ``small_kernel`` the parallel one or None.
        drop_path: stochastic depth rate of the residual branch.
        norm_layer, act_layer: build the norms and the activations.
        deploy: build the fused form directly.

    State dict: training ``prelkb_bn``, ``pw1.{conv,bn}``,
    ``large_kernel.{lkb_origin,small_conv}.{conv,bn}``, ``pw2.{conv,bn}``
    (the official names); deploy ``pw1.conv``, ``large_kernel.lkb_reparam``,
    ``pw2.conv``, each ``{weight,bias}``.
    """

    norm_name = 'prelkb_bn'

    def __init__(self, in_channels: int, dw_channels: int, block_lk_size: int,
                 small_kernel: Optional[int] = 5, drop_path: float = 0.,
                 norm_layer: NormLayer = nn.BatchNorm2d, act_layer: ActLayer = nn.ReLU,
                 deploy: bool = False):
        super().__init__()
        self.deploy = deploy
        if not deploy:
            self.prelkb_bn = norm_layer(in_channels)
        self.pw1 = ConvBN(in_channels, dw_channels, 1, norm_layer=norm_layer,
                          act_layer=act_layer, deploy=deploy)
        self.large_kernel = ReparamLargeKernelConv(dw_channels, block_lk_size,
                                                   small_kernel=small_kernel,
                                                   norm_layer=norm_layer, deploy=deploy)
        self.lk_nonlinear = act_layer()
        self.pw2 = ConvBN(dw_channels, in_channels, 1, norm_layer=norm_layer, deploy=deploy)
        self.drop_path = DropPath(drop_path)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.lk_nonlinear(self.large_kernel(self.pw1(x))))


class ConvFFN(_PreNormResidual):
    """RepLKNet's feed-forward block: ``x + DP(pw2(act(pw1(BN(x)))))``.

    ``pw1``/``pw2`` are ``1x1`` conv + BN expanding to ``internal_channels``
    and back; ``act`` is GELU as in the official code. Fused:
    ``x + pw2'(act(pw1'(x)))``.

    Args:
        in_channels: channels of the block input and output.
        internal_channels: the hidden width (``ffn_ratio * in_channels``).
        drop_path: stochastic depth rate of the residual branch.
        norm_layer, act_layer: build the norms and the activation.
        deploy: build the fused form directly.

    State dict: training ``preffn_bn``, ``pw1.{conv,bn}``, ``pw2.{conv,bn}``;
    deploy ``pw1.conv.{weight,bias}``, ``pw2.conv.{weight,bias}``.
    """

    norm_name = 'preffn_bn'

    def __init__(self, in_channels: int, internal_channels: int, drop_path: float = 0.,
                 norm_layer: NormLayer = nn.BatchNorm2d, act_layer: ActLayer = nn.GELU,
                 deploy: bool = False):
        super().__init__()
        self.deploy = deploy
        if not deploy:
            self.preffn_bn = norm_layer(in_channels)
        self.pw1 = ConvBN(in_channels, internal_channels, 1, norm_layer=norm_layer, deploy=deploy)
        self.nonlinear = act_layer()
        self.pw2 = ConvBN(internal_channels, in_channels, 1, norm_layer=norm_layer, deploy=deploy)
        self.drop_path = DropPath(drop_path)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.nonlinear(self.pw1(x)))


class FoldableNorm(ReparamModule):
    """A BatchNorm with nothing to fold into, fused to a depthwise ``1x1`` conv.

    Eval-mode ``BN(x) = a * x + s`` per channel is the conv with kernel
    ``a`` and bias ``s`` (:func:`mmrep.fusion.fold_bn_module`). RepLKNet uses
    it to normalize the features it hands to a neck
    (``norm_intermediate_features``).

    Both forms start as a fresh norm (:meth:`reset_parameters`): the deploy
    form's conv is a fresh BatchNorm folded, kernel ``1/sqrt(1 + eps)`` and
    bias 0, not a randomly initialised conv, so a fused model whose weights
    have no norm (ImageNet checkpoints) computes what the training form does.

    State dict: training ``bn``; deploy ``conv.{weight,bias}``.
    """

    def __init__(self, channels: int, norm_layer: NormLayer = nn.BatchNorm2d,
                 deploy: bool = False):
        super().__init__()
        self.channels = channels
        self.deploy = deploy
        self.norm_layer = norm_layer
        if deploy:
            self.conv = self._affine_conv()
        else:
            self.bn = norm_layer(channels)
        self.reset_parameters()

    def _affine_conv(self) -> nn.Conv2d:
        return nn.Conv2d(self.channels, self.channels, 1, groups=self.channels)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A fresh norm: unit scale, zero shift, zero mean, unit variance (in either form)."""
        if not self.deploy:
            self.bn.reset_parameters()
            return
        fresh = self.norm_layer(self.channels).to(self.conv.weight.device).eval()
        kernel, bias = fusion.fold_bn_module(fresh, self.channels, groups=self.channels)
        self.conv.weight.copy_(kernel)
        self.conv.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if self.deploy else self.bn(x)

    def fused_kernel_bias(self) -> fusion.KernelBias:
        if self.deploy:
            return self.conv.weight, self.conv.bias
        return fusion.fold_bn_module(self.bn, self.channels, groups=self.channels)

    def reparameterize(self) -> None:
        if self.deploy:
            return
        kernel, bias = self.fused_kernel_bias()
        self.conv = conv_from(self._affine_conv(), kernel, bias)
        del self.bn
        self.deploy = True
