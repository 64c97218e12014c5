"""OREPA: online convolutional re-parameterization. Pure torch.

Hu et al., "Online Convolutional Re-parameterization", CVPR 2022.

An OREPA conv trains several LINEAR branches, each scaled by a learnable
per-output-channel vector instead of a per-branch BN. Since they are linear,
a kernel generator folds them into ONE kernel on every forward pass, so
training runs a single conv, a single norm and the activation. Deploy folds
the norm into the last generated kernel, leaving a plain conv with bias.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmrep import fusion
from mmrep.blocks.base import ActLayer, NormLayer, ReparamModule, conv_from

#: Depthwise maps per input channel in the depthwise-separable branch (official value).
DWS_EXPANSION = 8


def frequency_prior(channels: int, kernel_size: int) -> Tensor:
    """The fixed DCT-like filters of OREPA's prior branch, shape ``(O, k, k)``.

    The first half of the channels (``i < O / 2``) vary along rows, the rest
    along columns: ``P[i, h, w] = cos(pi * (h + 0.5) * (i + 1) / k)`` for
    ``i < O / 2``, else ``cos(pi * (w + 0.5) * (i + 1 - O / 2) / k)``. The
    official code writes it for ``k = 3`` only; this is the same formula for
    any ``k``.
    """
    index = torch.arange(channels, dtype=torch.float64)
    half = channels / 2
    by_rows = index < half
    frequency = torch.where(by_rows, index + 1, index + 1 - half)
    position = torch.arange(kernel_size, dtype=torch.float64) + 0.5
    wave = torch.cos(math.pi * frequency[:, None] * position[None, :] / kernel_size)  # (O, k)
    prior = torch.where(by_rows[:, None, None], wave[:, :, None], wave[:, None, :])
    return prior.float()


def _check_odd(kernel_size: int, minimum: int, what: str) -> None:
    if kernel_size < minimum or kernel_size % 2 == 0:
        raise ValueError(f'{what} needs an odd kernel size >= {minimum}, got {kernel_size}')


def _kaiming_param(*shape: int, a: float = 0.0) -> nn.Parameter:
    weight = torch.empty(*shape)
    nn.init.kaiming_uniform_(weight, a=a)
    return nn.Parameter(weight)


def _scales(values, channels: int) -> nn.Parameter:
    """One per-output-channel scale vector per branch, ``(branches, O)``."""
    return nn.Parameter(torch.tensor(values, dtype=torch.float32)[:, None].repeat(1, channels))


def _no_bias(kernel: Tensor) -> fusion.KernelBias:
    return kernel, fusion.zeros_bias(kernel)


class OREPAKernel(nn.Module):
    """Generates the ``k x k`` kernel of an OREPA conv from six linear branches.

    Not a layer: ``forward()`` takes no input and returns the kernel
    ``(O, C/g, k, k)``, ``sum_b scales[b, o] * K_b`` over the branches, in
    the order of :attr:`branches` (official initial scale in brackets):

    - ``origin`` (0.25): a plain ``k x k`` kernel;
    - ``avg`` (0.25): ``1x1`` then ``k x k`` average pooling;
    - ``prior`` (0.0): ``1x1`` then the fixed :func:`frequency_prior` filter
      of each output channel;
    - ``1x1_kxk`` (0.5): ``1x1`` (``internal_channels``, initialised as a
      (repeated) identity: a learned offset from a fixed identity kernel)
      then ``k x k``;
    - ``1x1`` (1.0): a ``1x1`` kernel, zero-padded to ``k x k``;
    - ``dws`` (0.5): depthwise ``k x k`` with :data:`DWS_EXPANSION` maps per
      input channel, then a ``1x1`` with ``groups``.

    Every branch has the conv's ``groups``; the ``dws`` ``1x1`` is a standard
    grouped conv weight (the official stores it with its output channels
    permuted when ``groups > 1``). The fixed parts (frequency prior,
    identity) are non-persistent buffers, so the state dict holds only what
    is learned.
    """

    #: The six linear branches, in the order of their learned ``scales``.
    branches = ('origin', 'avg', 'prior', '1x1_kxk', '1x1', 'dws')
    init_scales = (0.25, 0.25, 0.0, 0.5, 1.0, 0.5)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 groups: int = 1, internal_channels: Optional[int] = None):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f'channels {in_channels} -> {out_channels} are not divisible by '
                             f'groups={groups}')
        _check_odd(kernel_size, 3, 'OREPA (OREPA1x1 for 1x1 convs)')
        if internal_channels is None:  # official: wider for many groups
            internal_channels = in_channels if groups <= 4 else 2 * in_channels
        if internal_channels % in_channels:
            raise ValueError(f'internal_channels ({internal_channels}) must be a multiple of '
                             f'in_channels ({in_channels})')
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.groups = kernel_size, groups
        self.internal_channels = internal_channels
        cin, k = in_channels // groups, kernel_size
        dws_channels = in_channels * DWS_EXPANSION

        self.weight_origin = _kaiming_param(out_channels, cin, k, k)
        self.weight_avg = _kaiming_param(out_channels, cin, 1, 1)
        self.weight_prior = _kaiming_param(out_channels, cin, 1, 1)
        self.register_buffer('prior', frequency_prior(out_channels, k), persistent=False)
        self.weight_1x1_kxk_first = nn.Parameter(torch.zeros(internal_channels, cin, 1, 1))
        identity = fusion.identity_kernel(in_channels, groups)
        self.register_buffer('identity_1x1', identity.repeat(internal_channels // in_channels,
                                                             1, 1, 1), persistent=False)
        self.weight_1x1_kxk_second = _kaiming_param(out_channels, internal_channels // groups,
                                                    k, k)
        self.weight_1x1 = _kaiming_param(out_channels, cin, 1, 1)
        self.weight_dw = _kaiming_param(dws_channels, 1, k, k)
        self.weight_pw = _kaiming_param(out_channels, dws_channels // groups, 1, 1)
        self.scales = _scales(self.init_scales, out_channels)

    def branch_kernels(self) -> List[Tensor]:
        """The unscaled ``k x k`` kernel of every branch, in the order of :attr:`branches`."""
        k = self.kernel_size
        average = self.weight_avg.new_full((k, k), 1.0 / k ** 2)
        first = self.weight_1x1_kxk_first + self.identity_1x1
        return [
            self.weight_origin,
            fusion.spread_1x1(self.weight_avg, average),
            fusion.spread_1x1(self.weight_prior, self.prior),
            fusion.compose_1x1_kxk(_no_bias(first), _no_bias(self.weight_1x1_kxk_second),
                                   self.groups)[0],
            fusion.pad_kernel(self.weight_1x1, k),
            fusion.compose_dw_pw(_no_bias(self.weight_dw), _no_bias(self.weight_pw),
                                 self.in_channels, self.groups)[0],
        ]

    def forward(self) -> Tensor:
        return sum(scale.reshape(-1, 1, 1, 1) * kernel
                   for scale, kernel in zip(self.scales, self.branch_kernels()))


class OREPA1x1Kernel(nn.Module):
    """Generates the ``1x1`` kernel of :class:`OREPA1x1` (groups 1).

    ``scales[0] * W_origin + scales[1] * (W_second @ W_first)`` (initial
    scales 1.0 and 0.5, as the official OREPA_1x1). The two-layer linear
    branch starts as an identity on its narrow side: ``W_first`` is the
    identity when ``O > C`` (so ``W_second`` is ``O x C``), else ``W_second`` is.
    """

    init_scales = (1.0, 0.5)

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.weight_origin = _kaiming_param(out_channels, in_channels, 1, 1, a=1.0)
        if out_channels > in_channels:
            self.weight_first = nn.Parameter(fusion.identity_kernel(in_channels))
            self.weight_second = _kaiming_param(out_channels, in_channels, 1, 1, a=1.0)
        else:
            self.weight_first = _kaiming_param(out_channels, in_channels, 1, 1, a=1.0)
            self.weight_second = nn.Parameter(fusion.identity_kernel(out_channels))
        self.scales = _scales(self.init_scales, out_channels)

    def forward(self) -> Tensor:
        linear, _ = fusion.compose_1x1_kxk(_no_bias(self.weight_first),
                                           _no_bias(self.weight_second))
        origin_scale, linear_scale = (s.reshape(-1, 1, 1, 1) for s in self.scales)
        return origin_scale * self.weight_origin + linear_scale * linear


class OREPALargeKernel(nn.Module):
    """Generates a large ``k x k`` kernel: a deep linear stack of ``(k - 1) / 2`` 3x3 OREPA kernels.

    ``layers[0]`` maps ``C -> O``, the others ``O -> O`` (internal width =
    ``out_channels``, as official); their kernels are composed with
    :func:`~mmrep.fusion.compose_kxk_kxk`, i.e. exactly what the stack of
    3x3 convs computes on an input padded once. (The official composes
    without flipping, i.e. a stack whose later kernels are mirrored: the same
    family of kernels.) Every layer has ``groups`` (the official passes groups
    to the first layer only, which breaks its composition for ``groups > 1``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 7,
                 groups: int = 1):
        super().__init__()
        _check_odd(kernel_size, 5, 'OREPALargeConv')
        self.groups = groups
        self.layers = nn.ModuleList(
            OREPAKernel(in_channels if i == 0 else out_channels, out_channels, 3, groups)
            for i in range((kernel_size - 1) // 2))

    def forward(self) -> Tensor:
        kernel = self.layers[0]()
        for layer in self.layers[1:]:
            kernel, _ = fusion.compose_kxk_kxk(_no_bias(kernel), _no_bias(layer()), self.groups)
        return kernel


class _OnlineReparamConv(ReparamModule):
    """``act(BN(conv(x, W)))`` with ``W = kernel_gen()`` generated on every pass.

    Fused (or built with ``deploy=True``): ``act(conv(x))``, the BN folded into
    the generated kernel; keys ``conv.weight``, ``conv.bias``.
    """

    def __init__(self, make_kernel_gen: Callable[[], nn.Module], in_channels: int,
                 out_channels: int, kernel_size: int, stride: int, padding: Optional[int],
                 dilation: int, groups: int, norm_layer: NormLayer,
                 act_layer: Optional[ActLayer], deploy: bool):
        super().__init__()
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        self.conv_args = dict(in_channels=in_channels, out_channels=out_channels,
                              kernel_size=kernel_size, stride=stride, padding=padding,
                              dilation=dilation, groups=groups)
        self.deploy = deploy
        if deploy:
            self.conv = nn.Conv2d(**self.conv_args, bias=True)
        else:
            self.kernel_gen = make_kernel_gen()
            self.bn = norm_layer(out_channels)
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            x = self.conv(x)
        else:
            args = self.conv_args
            x = self.bn(F.conv2d(x, self.kernel_gen(), None, args['stride'], args['padding'],
                                 args['dilation'], args['groups']))
        return self.act(x)

    def fused_kernel_bias(self) -> fusion.KernelBias:
        if self.deploy:
            return self.conv.weight, self.conv.bias
        return fusion.fold_bn(self.kernel_gen(), None, self.bn)

    def reparameterize(self) -> None:
        if self.deploy:
            return
        with torch.no_grad():
            kernel, bias = self.fused_kernel_bias()
        template = nn.Conv2d(**self.conv_args, bias=False, device='meta')
        self.conv = conv_from(template, kernel, bias)
        del self.kernel_gen, self.bn
        self.deploy = True


class OREPA(_OnlineReparamConv):
    """An OREPA ``k x k`` conv: ``act(BN(conv(x, W)))``, ``W`` from :class:`OREPAKernel`.

    Args:
        in_channels, out_channels, kernel_size, stride, dilation, groups: as
            ``nn.Conv2d`` (``kernel_size`` odd and >= 3); padding defaults to "same".
        internal_channels: width of the ``1x1 -> k x k`` branch; default
            ``in_channels``, or ``2 * in_channels`` when ``groups > 4`` (official).
        norm_layer: builds the single norm from a channel count (BN, SyncBN, ...).
        act_layer: builds the activation, or None for none.
        deploy: build the fused form (``conv`` with bias, no norm) directly.

    Keys: ``kernel_gen.{weight_origin, weight_avg, weight_prior,
    weight_1x1_kxk_first, weight_1x1_kxk_second, weight_1x1, weight_dw,
    weight_pw, scales}``, ``bn.*``; fused: ``conv.{weight, bias}``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: Optional[int] = None, dilation: int = 1,
                 groups: int = 1, internal_channels: Optional[int] = None,
                 norm_layer: NormLayer = nn.BatchNorm2d, act_layer: Optional[ActLayer] = None,
                 deploy: bool = False):
        _check_odd(kernel_size, 3, 'OREPA (OREPA1x1 for 1x1 convs)')
        super().__init__(
            lambda: OREPAKernel(in_channels, out_channels, kernel_size, groups,
                                internal_channels),
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
            norm_layer, act_layer, deploy)


class OREPA1x1(_OnlineReparamConv):
    """The official OREPA_1x1: ``act(BN(conv1x1(x, W)))``, ``W`` from :class:`OREPA1x1Kernel`.

    A strided instance is a strided ``1x1`` conv (ResNet projection
    shortcuts), as in the official code. Groups are not supported (official).
    Keys: ``kernel_gen.{weight_origin, weight_first, weight_second, scales}``,
    ``bn.*``; fused: ``conv.{weight, bias}``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 norm_layer: NormLayer = nn.BatchNorm2d, act_layer: Optional[ActLayer] = None,
                 deploy: bool = False):
        super().__init__(lambda: OREPA1x1Kernel(in_channels, out_channels),
                         in_channels, out_channels, 1, stride, 0, 1, 1,
                         norm_layer, act_layer, deploy)


class OREPALargeConv(_OnlineReparamConv):
    """The official OREPA_LargeConv: a deep linear ``k x k`` conv (``k`` odd, >= 5) then BN (+act).

    ``W`` comes from :class:`OREPALargeKernel`: ``(k - 1) / 2`` stacked 3x3
    OREPA kernels composed into one, e.g. three for the 7x7 ResNet stem.
    Keys: ``kernel_gen.layers.{i}.*`` (each an :class:`OREPAKernel`),
    ``bn.*``; fused: ``conv.{weight, bias}``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 7,
                 stride: int = 1, padding: Optional[int] = None, dilation: int = 1,
                 groups: int = 1, norm_layer: NormLayer = nn.BatchNorm2d,
                 act_layer: Optional[ActLayer] = None, deploy: bool = False):
        _check_odd(kernel_size, 5, 'OREPALargeConv')
        super().__init__(lambda: OREPALargeKernel(in_channels, out_channels, kernel_size, groups),
                         in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, norm_layer, act_layer, deploy)
