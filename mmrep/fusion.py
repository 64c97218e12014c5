"""Re-parameterization math: pure torch, no OpenMMLab import.

Every structural re-parameterization in mmrep reduces a block to one
convolution ``y = W * x + b``. The functions below turn the pieces of a
training-time block into such ``(W, b)`` pairs and combine them. Each
formula lives here once; blocks only say which pieces they have.

Shapes follow ``torch.nn.Conv2d``: a kernel ``W`` is
``(C_out, C_in / groups, k_h, k_w)`` and a bias ``b`` is ``(C_out,)``.
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KernelBias = Tuple[Tensor, Tensor]

__all__ = [
    'KernelBias', 'bn_running_stats', 'bn_scale_shift', 'fold_bn', 'fold_bn_module', 'pad_kernel',
    'identity_kernel', 'sum_branches', 'compose_1x1_kxk', 'avg_pool_kernel',
    'fold_preceding_bn', 'zeros_bias', 'compose_kxk_1x1', 'spread_1x1',
]


def zeros_bias(kernel: Tensor) -> Tensor:
    """The bias of a conv that has none: ``b = 0`` of shape ``(C_out,)``."""
    return kernel.new_zeros(kernel.shape[0])


def bn_scale_shift(running_mean: Tensor, running_var: Tensor,
                   weight: Optional[Tensor], bias: Optional[Tensor],
                   eps: float) -> Tuple[Tensor, Tensor]:
    """Write an eval-mode BatchNorm as a per-channel affine map ``a * x + s``.

    ``a = gamma / sqrt(var + eps)`` and ``s = beta - mean * a``; a BN
    without affine parameters has ``gamma = 1`` and ``beta = 0``.
    """
    std = torch.sqrt(running_var + eps)
    gamma = weight if weight is not None else torch.ones_like(running_var)
    beta = bias if bias is not None else torch.zeros_like(running_mean)
    scale = gamma / std
    return scale, beta - running_mean * scale


def bn_running_stats(bn: nn.Module) -> Tuple[Tensor, Tensor]:
    """The running mean and variance of a BatchNorm that can be folded into a conv.

    Raises TypeError for another norm and ValueError for a BatchNorm without
    running statistics: neither is a fixed affine map in eval mode.
    """
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f'expected a BatchNorm layer (BN or SyncBN), got {type(bn).__name__}')
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f'{type(bn).__name__} has track_running_stats=False: its eval-mode '
                         'output depends on the batch, so it cannot be folded into a conv')
    return bn.running_mean, bn.running_var


def fold_bn(kernel: Tensor, bias: Optional[Tensor], bn: nn.Module) -> KernelBias:
    """Fold an eval-mode BatchNorm that follows a conv into the conv.

    ``BN(W * x + b) = W' * x + b'`` with, per output channel ``o``,
    ``W'[o] = W[o] * gamma[o] / sqrt(var[o] + eps)`` and
    ``b'[o] = beta[o] + (b[o] - mean[o]) * gamma[o] / sqrt(var[o] + eps)``
    (``b = 0`` for a conv without bias). Works for ``BatchNorm2d`` and
    ``SyncBatchNorm`` alike and uses the layer's own ``eps``.
    """
    mean, var = bn_running_stats(bn)
    scale, shift = bn_scale_shift(mean, var, bn.weight, bn.bias, bn.eps)
    if bias is None:
        bias = zeros_bias(kernel)
    return kernel * scale.reshape(-1, 1, 1, 1), shift + bias * scale


def fold_bn_module(bn: nn.Module, channels: int, groups: int = 1,
                   kernel_size: int = 1) -> KernelBias:
    """A BatchNorm on the identity path, as a conv: ``BN(x) = W' * x + b'``.

    ``W'`` is :func:`identity_kernel` folded with the BN (see :func:`fold_bn`).
    """
    kernel = identity_kernel(channels, groups, kernel_size,
                             dtype=bn.running_var.dtype, device=bn.running_var.device)
    return fold_bn(kernel, None, bn)


def pad_kernel(kernel: Tensor, size: int | Tuple[int, int]) -> Tensor:
    """Zero-pad a ``k x k`` kernel to a larger odd ``K x K``, centred.

    ``W'[..., i + p, j + p] = W[..., i, j]`` with ``p = (K - k) / 2`` and zeros
    elsewhere. A conv with ``W'`` and padding ``P`` equals the conv with ``W``
    and padding ``P - p``, so small branches can be added to a large kernel.
    """
    target = (size, size) if isinstance(size, int) else tuple(size)
    kh, kw = kernel.shape[-2:]
    dh, dw = target[0] - kh, target[1] - kw
    if dh < 0 or dw < 0:
        raise ValueError(f'cannot pad a {kh}x{kw} kernel to the smaller {target[0]}x{target[1]}')
    if dh % 2 or dw % 2:
        raise ValueError(f'padding a {kh}x{kw} kernel to {target[0]}x{target[1]} would '
                         'shift its centre: sizes must differ by an even number')
    return F.pad(kernel, [dw // 2, dw // 2, dh // 2, dh // 2])


def identity_kernel(channels: int, groups: int = 1, kernel_size: int = 1,
                    dtype: torch.dtype = torch.float32,
                    device: Optional[torch.device] = None) -> Tensor:
    """The identity map as a ``k x k`` (grouped) conv kernel.

    ``W[i, i % (C / g), c, c] = 1`` and 0 elsewhere, where ``c = (k - 1) / 2``:
    output channel ``i`` reads input channel ``i``, which is the
    ``i % (C / g)``-th channel of its group.
    """
    if channels % groups:
        raise ValueError(f'channels ({channels}) must be divisible by groups ({groups})')
    if kernel_size % 2 != 1:
        raise ValueError(f'an identity kernel needs an odd size, got {kernel_size}')
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kernel_size, kernel_size,
                         dtype=dtype, device=device)
    centre = kernel_size // 2
    index = torch.arange(channels, device=device)
    kernel[index, index % per_group, centre, centre] = 1
    return kernel


def sum_branches(branches: Iterable[KernelBias]) -> KernelBias:
    """Parallel branches that read the same input and are summed, as one conv.

    ``sum_i (W_i * x + b_i) = (sum_i pad(W_i)) * x + sum_i b_i``, where
    ``pad`` centres every kernel in the largest one (:func:`pad_kernel`).
    All branches must share stride, groups and the centre of their padding.
    """
    branches = list(branches)
    if not branches:
        raise ValueError('sum_branches needs at least one branch')
    kh = max(k.shape[-2] for k, _ in branches)
    kw = max(k.shape[-1] for k, _ in branches)
    kernel = sum(pad_kernel(k, (kh, kw)) for k, _ in branches)
    bias = sum(b for _, b in branches)
    return kernel, bias


def compose_1x1_kxk(first: KernelBias, second: KernelBias, groups: int = 1) -> KernelBias:
    """Sequential ``1x1`` conv then ``k x k`` conv, as one ``k x k`` conv.

    With ``W1`` of shape ``(M, C/g, 1, 1)`` and ``W2`` of shape ``(O, M/g, k, k)``,
    per group ``j``: ``W[j] = W2[j] (x) W1[j]``, i.e.
    ``W[o, c] = sum_m W2[o, m] * W1[m, c]``, and
    ``b[o] = b2[o] + sum_{m, u, v} W2[o, m, u, v] * b1[m]``.

    The bias term is exact where the ``k x k`` conv sees ``b1`` at every tap:
    inside the image, or everywhere when the intermediate map is padded with
    ``b1`` (or ``b1 = 0``, as in OREPA's linear branches). Zero padding of a
    non-zero ``b1`` differs at the border.
    """
    w1, b1 = first
    w2, b2 = second
    if w1.shape[-2:] != (1, 1):
        raise ValueError(f'the first conv must be 1x1, got {tuple(w1.shape[-2:])}')
    if w1.shape[0] % groups or w2.shape[0] % groups:
        raise ValueError(f'channels {w1.shape[0]} and {w2.shape[0]} are not divisible by groups={groups}')
    if w2.shape[1] * groups != w1.shape[0]:
        raise ValueError(f'the kxk conv reads {w2.shape[1] * groups} channels but the 1x1 '
                         f'conv writes {w1.shape[0]}')
    kernels = []
    for w1_g, w2_g in zip(w1.chunk(groups, dim=0), w2.chunk(groups, dim=0)):
        # (O/g, M/g, k, k) conv (C/g -> M/g as channels): out[o, c] = sum_m w2[o, m] w1[m, c]
        kernels.append(torch.einsum('omuv,mc->ocuv', w2_g, w1_g[:, :, 0, 0]))
    kernel = torch.cat(kernels, dim=0)
    b1_grouped = b1.reshape(groups, -1)  # (g, M/g)
    w2_grouped = w2.reshape(groups, w2.shape[0] // groups, w2.shape[1], -1)  # (g, O/g, M/g, k*k)
    bias = b2 + torch.einsum('gomt,gm->go', w2_grouped, b1_grouped).reshape(-1)
    return kernel, bias


def avg_pool_kernel(channels: int, kernel_size: int, groups: int = 1,
                    dtype: torch.dtype = torch.float32,
                    device: Optional[torch.device] = None) -> Tensor:
    """A ``k x k`` average pool over each channel, as a conv kernel.

    ``W[i, i % (C / g), :, :] = 1 / k^2``. Equal to ``AvgPool2d`` with
    ``count_include_pad=True`` and the same stride and zero padding.
    """
    centre = identity_kernel(channels, groups, 1, dtype=dtype, device=device)
    return centre.expand(-1, -1, kernel_size, kernel_size) / kernel_size ** 2


def fold_preceding_bn(bn: nn.Module, kernel: Tensor, bias: Optional[Tensor]) -> KernelBias:
    """Fold an eval-mode BatchNorm that comes BEFORE a ``1x1`` conv into the conv.

    With ``BN(x) = a * x + s`` per input channel (:func:`bn_scale_shift`),
    ``W * BN(x) + b = W' * x + b'`` where ``W'[o, c] = W[o, c] * a[c]`` and
    ``b'[o] = b[o] + sum_c W[o, c] * s[c]``. Exact for ``1x1`` convs without
    groups, which have no zero padding that would skip the shift.
    """
    if kernel.shape[-2:] != (1, 1):
        raise ValueError('a preceding BN folds exactly only into a 1x1 conv, '
                         f'got {tuple(kernel.shape[-2:])}')
    mean, var = bn_running_stats(bn)
    if kernel.shape[1] != mean.shape[0]:
        raise ValueError(f'the conv reads {kernel.shape[1]} channels (a grouped conv?) '
                         f'but the BN has {mean.shape[0]}')
    scale, shift = bn_scale_shift(mean, var, bn.weight, bn.bias, bn.eps)
    if bias is None:
        bias = zeros_bias(kernel)
    new_kernel = kernel * scale.reshape(1, -1, 1, 1)
    new_bias = bias + (kernel[:, :, 0, 0] * shift.reshape(1, -1)).sum(dim=1)
    return new_kernel, new_bias


def compose_kxk_1x1(first: KernelBias, second: KernelBias, groups: int = 1) -> KernelBias:
    """Sequential ``k x k`` conv (``groups`` g) then dense ``1x1`` conv, as one dense ``k x k`` conv.

    With ``W1`` of shape ``(M, C/g, k, k)`` and ``W2`` of shape ``(O, M, 1, 1)``:
    ``W[o, c, u, v] = sum_{m in group(c)} W2[o, m] * W1[m, c % (C/g), u, v]`` and
    ``b[o] = b2[o] + sum_m W2[o, m] * b1[m]``. Exact everywhere, since the
    ``1x1`` conv has no padding. A depthwise-separable pair is ``g = C``.
    """
    w1, b1 = first
    w2, b2 = second
    if w2.shape[-2:] != (1, 1):
        raise ValueError(f'the second conv must be 1x1, got {tuple(w2.shape[-2:])}')
    mid, cin_per_group = w1.shape[:2]
    if w2.shape[1] != mid:
        raise ValueError(f'the 1x1 conv reads {w2.shape[1]} channels but the kxk conv writes {mid}')
    if mid % groups:
        raise ValueError(f'{mid} channels are not divisible by groups={groups}')
    mid_per_group = mid // groups
    dense = w1.new_zeros(mid, cin_per_group * groups, *w1.shape[-2:])
    for j in range(groups):
        rows = slice(j * mid_per_group, (j + 1) * mid_per_group)
        dense[rows, j * cin_per_group:(j + 1) * cin_per_group] = w1[rows]
    mix = w2[:, :, 0, 0]
    return torch.einsum('om,mcuv->ocuv', mix, dense), b2 + mix @ b1


def spread_1x1(kernel_1x1: Tensor, spatial: Tensor) -> Tensor:
    """A ``1x1`` kernel followed by a fixed per-channel spatial filter, as one ``k x k`` kernel.

    ``W[o, i, u, v] = W1[o, i] * S[u, v]`` for a shared ``S`` of shape
    ``(k, k)``, or ``W1[o, i] * S[o, u, v]`` for one filter per output channel
    (``S`` of shape ``(O, k, k)``). ``S = 1 / k^2`` is a ``1x1`` conv then
    average pooling (count_include_pad) of each output channel.
    """
    if kernel_1x1.shape[-2:] != (1, 1):
        raise ValueError(f'expected a 1x1 kernel, got {tuple(kernel_1x1.shape[-2:])}')
    if spatial.dim() == 2:
        spatial = spatial.unsqueeze(0)
    return kernel_1x1 * spatial.unsqueeze(1)


def compose_kxk_kxk(first: KernelBias, second: KernelBias, groups: int = 1) -> KernelBias:
    """Sequential ``k1 x k1`` conv then ``k2 x k2`` conv (stride 1, same groups), as one conv.

    With ``W1`` of shape ``(M, C/g, k1, k1)`` and ``W2`` of shape ``(O, M/g, k2, k2)``
    the composite has size ``K = k1 + k2 - 1`` and is their full 2-D convolution
    (per group): ``W[o, c, s, t] = sum_{m, u, v} W2[o, m, u, v] * W1[m, c, s - u, t - v]``,
    and ``b[o] = b2[o] + sum_{m, u, v} W2[o, m, u, v] * b1[m]``. Exact for the
    stack run on an input zero-padded once by ``P1 + P2`` (the composite's
    padding); with each conv padding its own input, the two differ within
    ``P2`` pixels of the border (and the bias term as in :func:`compose_1x1_kxk`).
    """
    w1, b1 = first
    w2, b2 = second
    if w1.shape[0] % groups or w2.shape[0] % groups or w2.shape[1] * groups != w1.shape[0]:
        raise ValueError(f'a {tuple(w2.shape)} kernel cannot follow a {tuple(w1.shape)} '
                         f'kernel with groups={groups}')
    k2h, k2w = w2.shape[-2:]
    # conv2d correlates; flipping W2 turns it into the convolution the stack computes.
    # Batch = the C/g input channels, channels = the M intermediate ones.
    kernel = F.conv2d(w1.transpose(0, 1), w2.flip(-2, -1), padding=(k2h - 1, k2w - 1),
                      groups=groups).transpose(0, 1)
    w2_grouped = w2.reshape(groups, w2.shape[0] // groups, w2.shape[1], -1)  # (g, O/g, M/g, k*k)
    bias = b2 + torch.einsum('gomt,gm->go', w2_grouped, b1.reshape(groups, -1)).reshape(-1)
    return kernel, bias


def compose_dw_pw(first: KernelBias, second: KernelBias, in_channels: int,
                  groups: int = 1) -> KernelBias:
    """Depthwise ``k x k`` conv then a (grouped) ``1x1`` conv, as one ``k x k`` conv.

    The depthwise conv ``W1`` of shape ``(C*r, 1, k, k)`` (``groups=C``) makes the
    ``r`` maps ``c*r .. c*r + r - 1`` of input channel ``c``; the ``1x1`` conv ``W2``
    of shape ``(O, C*r/g, 1, 1)`` has groups ``g``. For output ``o`` of group ``j``
    and input channel ``c = j*C/g + c'``:
    ``W[o, c', u, v] = sum_e W2[o, c'*r + e] * W1[c*r + e, 0, u, v]`` and
    ``b[o] = b2[o] + sum_m W2[o, m] * b1[j*C*r/g + m]``. Exact everywhere (the
    ``1x1`` conv has no padding). For ``g = 1`` this is :func:`compose_kxk_1x1`
    with ``groups=C``, as one vectorized product (no loop over channels).
    """
    w1, b1 = first
    w2, b2 = second
    mid = w1.shape[0]
    if w1.shape[1] != 1 or w2.shape[-2:] != (1, 1):
        raise ValueError(f'expected a depthwise kernel (C*r, 1, k, k) and a 1x1 kernel, got '
                         f'{tuple(w1.shape)} and {tuple(w2.shape)}')
    if (mid % in_channels or in_channels % groups or w2.shape[0] % groups
            or w2.shape[1] * groups != mid):
        raise ValueError(f'kernels {tuple(w1.shape)} and {tuple(w2.shape)} do not make a '
                         f'depthwise-separable pair for {in_channels} channels, groups={groups}')
    out_channels = w2.shape[0]
    ratio, per_group = mid // in_channels, in_channels // groups
    dw = w1.reshape(groups, per_group, ratio, *w1.shape[-2:])  # (g, C/g, r, k, k)
    pw = w2.reshape(groups, out_channels // groups, per_group, ratio)  # (g, O/g, C/g, r)
    kernel = torch.einsum('gocr,gcruv->gocuv', pw, dw).reshape(
        out_channels, per_group, *w1.shape[-2:])
    bias = b2 + torch.einsum('gom,gm->go', pw.flatten(2), b1.reshape(groups, -1)).reshape(-1)
    return kernel, bias


__all__ += ['compose_kxk_kxk', 'compose_dw_pw']
