"""The training-time block protocol and the conv + BN unit every block is made of.

Pure torch. A :class:`ReparamModule` fuses itself in place with
:meth:`~ReparamModule.reparameterize`; the math comes from :mod:`mmrep.fusion`.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from mmrep import fusion

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]


def make_divisible(value: float, divisor: int = 4, min_value: Optional[int] = None,
                   round_limit: float = 0.9) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``min_value``,
    default ``divisor``), rounding up when the nearest one is below ``round_limit * value``.

    The MobileNet / GhostNet / RepGhostNet channel rule (``round_limit=0.9``);
    timm's squeeze-excitation widths (RepViT) use ``round_limit=0``: plain rounding.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


class ReparamModule(nn.Module):
    """A block with a multi-branch training form and a single-conv deploy form.

    ``deploy`` is True once the block is fused (or was built fused).
    :meth:`reparameterize` fuses the block in place and is a no-op on a fused
    block. :func:`mmrep.reparameterize_model` calls it on children before
    parents, so a block may rely on its :class:`ReparamModule` children being
    fused already and read them through :meth:`fused_kernel_bias`.
    """

    deploy: bool = False

    def reparameterize(self) -> None:  # pragma: no cover - interface
        """Fuse this block in place into its deploy form; a no-op on a fused block."""
        raise NotImplementedError

    def fused_kernel_bias(self) -> fusion.KernelBias:
        """The ``(W, b)`` of the single conv this block is equal to."""
        raise NotImplementedError(f'{type(self).__name__} is not a single conv')


def branch_kernel_bias(branch: nn.Module, in_channels: int, groups: int,
                       like: torch.Tensor) -> fusion.KernelBias:
    """The ``(W, b)`` of one parallel branch of a block that reads ``in_channels`` with ``groups``.

    A branch is a conv-BN or another single-conv block (its
    :meth:`~ReparamModule.fused_kernel_bias`), a plain conv (its weights, a
    zero bias if it has none), a BatchNorm on the identity path
    (:func:`~mmrep.fusion.fold_bn_module`) or the identity itself
    (:func:`~mmrep.fusion.identity_kernel`, of ``like``'s dtype and device).
    """
    if isinstance(branch, ReparamModule):
        return branch.fused_kernel_bias()
    if isinstance(branch, nn.Conv2d):
        bias = branch.bias if branch.bias is not None else fusion.zeros_bias(branch.weight)
        return branch.weight, bias
    if isinstance(branch, nn.modules.batchnorm._BatchNorm):
        return fusion.fold_bn_module(branch, in_channels, groups)
    if isinstance(branch, nn.Identity):
        kernel = fusion.identity_kernel(in_channels, groups, dtype=like.dtype, device=like.device)
        return kernel, fusion.zeros_bias(kernel)
    raise TypeError(f'a {type(branch).__name__} branch is not a linear map mmrep can fuse')


def conv_from(template: nn.Conv2d, kernel: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A conv with the template's stride, padding, dilation and groups, and the given weights.

    The padding grows with the kernel when the fused kernel is larger than
    the template's, so the centre stays aligned.
    """
    kh, kw = kernel.shape[-2:]
    th, tw = template.kernel_size
    pad_h, pad_w = template.padding if isinstance(template.padding, tuple) else (template.padding,) * 2
    conv = nn.Conv2d(template.in_channels, template.out_channels, (kh, kw),
                     stride=template.stride,
                     padding=(pad_h + (kh - th) // 2 * template.dilation[0],
                              pad_w + (kw - tw) // 2 * template.dilation[1]),
                     dilation=template.dilation, groups=template.groups, bias=True,
                     padding_mode=template.padding_mode,
                     device=kernel.device, dtype=kernel.dtype)
    conv.weight.data.copy_(kernel.detach())
    conv.bias.data.copy_(bias.detach())
    return conv


class ConvBN(ReparamModule):
    """``act(BN(conv(x)))``, fused to ``act(conv'(x))`` with the BN folded in.

    Args:
        in_channels, out_channels, kernel_size, stride, dilation, groups: as
            ``nn.Conv2d``; padding defaults to "same" for odd kernels.
        norm_layer: builds the norm from a channel count (BN, SyncBN, ...).
        act_layer: builds the activation, or None for none.
        deploy: build the fused form (conv with bias, no norm) directly.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: Optional[int] = None, dilation: int = 1,
                 groups: int = 1, norm_layer: NormLayer = nn.BatchNorm2d,
                 act_layer: Optional[ActLayer] = None, deploy: bool = False):
        super().__init__()
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        self.deploy = deploy
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                              dilation, groups, bias=deploy)
        if not deploy:
            self.bn = norm_layer(out_channels)
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if not self.deploy:
            x = self.bn(x)
        return self.act(x)

    def fused_kernel_bias(self) -> fusion.KernelBias:
        if self.deploy:
            return self.conv.weight, self.conv.bias
        return fusion.fold_bn(self.conv.weight, self.conv.bias, self.bn)

    def reparameterize(self) -> None:
        if self.deploy:
            return
        kernel, bias = self.fused_kernel_bias()
        self.conv = conv_from(self.conv, kernel, bias)
        del self.bn
        self.deploy = True
