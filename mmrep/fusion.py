r"""Re-parameterization math: pure torch, no OpenMMLab import.

Every structural re-parameterization in mmrep reduces a block to one
convolution :math:`y = W * x + b`. The functions below turn the pieces of a
training-time block into such ``(W, b)`` pairs and combine them. Each
formula lives here once, with its derivation; blocks only say which pieces
they have.

Shapes follow ``torch.nn.Conv2d``: a kernel ``W`` is
``(C_out, C_in / groups, k_h, k_w)`` and a bias ``b`` is ``(C_out,)``.
Like ``torch.nn.Conv2d``, a conv correlates. For one group, output channel
:math:`o` at pixel :math:`p` is

.. math::

   (W * x + b)[o](p) = b[o] + \sum_c \sum_t W[o, c, t]\, x[c](p + t),

where :math:`t` runs over the kernel's taps (2-D offsets from its centre)
and :math:`x` is zero outside the image (the conv's zero padding). With
groups :math:`g`, output channel :math:`o` reads only the :math:`C/g` input
channels of its group. Every formula below is linear algebra on this sum.
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
    """The bias of a conv that has none: :math:`b = 0` of shape ``(C_out,)``."""
    return kernel.new_zeros(kernel.shape[0])


def bn_scale_shift(running_mean: Tensor, running_var: Tensor,
                   weight: Optional[Tensor], bias: Optional[Tensor],
                   eps: float) -> Tuple[Tensor, Tensor]:
    r"""Write an eval-mode BatchNorm as a per-channel affine map :math:`a x + s`.

    In eval mode a BatchNorm uses its running mean :math:`\mu` and variance
    :math:`\sigma^2`, so per channel

    .. math::

       \mathrm{BN}(x) = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta
                      = a x + s, \qquad
       a = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}, \quad s = \beta - \mu a.

    A BN without affine parameters has :math:`\gamma = 1` and :math:`\beta = 0`.

    Returns:
        ``(a, s)``, each of shape ``(C,)``.
    """
    std = torch.sqrt(running_var + eps)
    gamma = weight if weight is not None else torch.ones_like(running_var)
    beta = bias if bias is not None else torch.zeros_like(running_mean)
    scale = gamma / std
    return scale, beta - running_mean * scale


def bn_running_stats(bn: nn.Module) -> Tuple[Tensor, Tensor]:
    """The running mean and variance of a BatchNorm that can be folded into a conv.

    Raises:
        TypeError: for another norm (GN, LN, ...).
        ValueError: for a BatchNorm without running statistics
            (``track_running_stats=False``).

    Neither is a fixed affine map in eval mode.
    """
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f'expected a BatchNorm layer (BN or SyncBN), got {type(bn).__name__}')
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f'{type(bn).__name__} has track_running_stats=False: its eval-mode '
                         'output depends on the batch, so it cannot be folded into a conv')
    return bn.running_mean, bn.running_var


def fold_bn(kernel: Tensor, bias: Optional[Tensor], bn: nn.Module) -> KernelBias:
    r"""Fold an eval-mode BatchNorm that follows a conv into the conv.

    With :math:`\mathrm{BN}(z) = a z + s` per output channel
    (:func:`bn_scale_shift`) and the conv linear in its kernel,

    .. math::

       \mathrm{BN}(W * x + b)[o] = a[o] (W * x)[o] + a[o] b[o] + s[o]
                                 = (W' * x)[o] + b'[o],

    .. math::

       W'[o] = a[o]\, W[o] = W[o] \frac{\gamma[o]}{\sqrt{\sigma^2[o] + \epsilon}},

    .. math::

       b'[o] = s[o] + a[o] b[o] = \beta[o] + (b[o] - \mu[o]) \frac{\gamma[o]}{\sqrt{\sigma^2[o] + \epsilon}},

    with :math:`b = 0` for a conv without bias. Exact everywhere, borders
    included: the BN acts on the conv's output, after any padding. Works for
    ``BatchNorm2d`` and ``SyncBatchNorm`` alike and uses the layer's own ``eps``.
    """
    mean, var = bn_running_stats(bn)
    scale, shift = bn_scale_shift(mean, var, bn.weight, bn.bias, bn.eps)
    if bias is None:
        bias = zeros_bias(kernel)
    return kernel * scale.reshape(-1, 1, 1, 1), shift + bias * scale


def fold_bn_module(bn: nn.Module, channels: int, groups: int = 1,
                   kernel_size: int = 1) -> KernelBias:
    r"""A BatchNorm on the identity path, as a conv: :math:`\mathrm{BN}(x) = W' * x + b'`.

    The identity is the conv :math:`x = I * x` with :math:`I` from
    :func:`identity_kernel` (zero bias), so :math:`\mathrm{BN}(I * x)` folds by
    :func:`fold_bn`: :math:`W'[i] = a[i]\, I[i]`, :math:`b' = s`.
    """
    kernel = identity_kernel(channels, groups, kernel_size,
                             dtype=bn.running_var.dtype, device=bn.running_var.device)
    return fold_bn(kernel, None, bn)


def pad_kernel(kernel: Tensor, size: int | Tuple[int, int]) -> Tensor:
    r"""Zero-pad a :math:`k \times k` kernel to a larger odd :math:`K \times K`, centred.

    :math:`W'[\ldots, i + p, j + p] = W[\ldots, i, j]` with :math:`p = (K - k) / 2`
    and zeros elsewhere. Indexed by offsets from the centre, :math:`W'` has the
    taps :math:`t` of :math:`W` and zeros at the others, so in the sum over taps
    of the conv (module docstring)

    .. math::

       \sum_{t \in K \times K} W'[o, c, t]\, x[c](p + t) = \sum_{t \in k \times k} W[o, c, t]\, x[c](p + t):

    a conv with :math:`W'` and padding :math:`P` equals the conv with :math:`W`
    and padding :math:`P - p`, at any stride. That is how small branches are
    added to a large kernel. The sizes must differ by an even number, or the
    centre would move.
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
    r"""The identity map as a :math:`k \times k` (grouped) conv kernel.

    :math:`W[i, i \bmod (C/g), c, c] = 1` and 0 elsewhere, where
    :math:`c = (k - 1) / 2` is the centre tap. Output channel :math:`i` belongs
    to group :math:`\lfloor i / (C/g) \rfloor`, whose input channel
    :math:`i \bmod (C/g)` is channel :math:`i` of :math:`x`, read at the centre
    tap only: :math:`(W * x)[i](p) = x[i](p)`.
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
    r"""Parallel branches that read the same input and are summed, as one conv.

    The conv is linear in its kernel, so

    .. math::

       \sum_i (W_i * x + b_i) = \Big(\sum_i \mathrm{pad}(W_i)\Big) * x + \sum_i b_i,

    where :math:`\mathrm{pad}` centres every kernel in the largest one
    (:func:`pad_kernel`, which leaves each branch's output unchanged). All
    branches must share stride, groups and the centre of their padding.
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
    r"""Sequential :math:`1 \times 1` conv then :math:`k \times k` conv, as one :math:`k \times k` conv.

    With :math:`W_1` of shape ``(M, C/g, 1, 1)`` and :math:`W_2` of shape
    ``(O, M/g, k, k)``, within each group (one group written out):

    .. math::

       y_1[m](p) = \sum_c W_1[m, c]\, x[c](p) + b_1[m],

    .. math::

       y_2[o](p) = b_2[o] + \sum_m \sum_t W_2[o, m, t]\, y_1[m](p + t)
                 = b_2[o] + \sum_c \sum_t \underbrace{\sum_m W_2[o, m, t] W_1[m, c]}_{W[o, c, t]} x[c](p + t)
                   + \underbrace{\sum_{m, t} W_2[o, m, t]\, b_1[m]}_{b[o] - b_2[o]}.

    The bias term is exact where the :math:`k \times k` conv sees :math:`b_1`
    at every tap: inside the image, or everywhere when the intermediate map is
    padded with :math:`b_1` (or :math:`b_1 = 0`, as in OREPA's linear branches).
    Zero padding of a non-zero :math:`b_1` differs at the border.
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
    r"""A :math:`k \times k` average pool over each channel, as a conv kernel.

    :math:`W[i, i \bmod (C/g), :, :] = 1 / k^2`: the identity kernel
    (:func:`identity_kernel`) spread over all :math:`k^2` taps, so
    :math:`(W * x)[i](p) = \frac{1}{k^2} \sum_t x[i](p + t)`. Equal to
    ``AvgPool2d`` with ``count_include_pad=True`` (padded zeros count in the
    mean) and the same stride and zero padding.
    """
    centre = identity_kernel(channels, groups, 1, dtype=dtype, device=device)
    return centre.expand(-1, -1, kernel_size, kernel_size) / kernel_size ** 2


def fold_preceding_bn(bn: nn.Module, kernel: Tensor, bias: Optional[Tensor]) -> KernelBias:
    r"""Fold an eval-mode BatchNorm that comes BEFORE a :math:`1 \times 1` conv into the conv.

    With :math:`\mathrm{BN}(x)[c] = a[c] x[c] + s[c]` per input channel
    (:func:`bn_scale_shift`):

    .. math::

       \sum_c W[o, c] (a[c] x[c] + s[c]) + b[o]
       = \sum_c \underbrace{W[o, c]\, a[c]}_{W'[o, c]} x[c]
         + \underbrace{b[o] + \sum_c W[o, c]\, s[c]}_{b'[o]}.

    Exact for :math:`1 \times 1` convs without groups, which have no zero
    padding: a padded :math:`k \times k` conv would read zeros, not
    :math:`s`, at the border.
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
    r"""Sequential :math:`k \times k` conv (groups :math:`g`) then dense :math:`1 \times 1` conv, as one dense :math:`k \times k` conv.

    With :math:`W_1` of shape ``(M, C/g, k, k)`` and :math:`W_2` of shape
    ``(O, M, 1, 1)``, write :math:`c' = c \bmod (C/g)` and :math:`m \in g(c)` for
    the intermediate channels of input channel :math:`c`'s group:

    .. math::

       y_2[o](p) = b_2[o] + \sum_m W_2[o, m] \Big(b_1[m] + \sum_{c \in g(m)} \sum_t W_1[m, c', t]\, x[c](p + t)\Big),

    so

    .. math::

       W[o, c, t] = \sum_{m \in g(c)} W_2[o, m]\, W_1[m, c', t], \qquad
       b[o] = b_2[o] + \sum_m W_2[o, m]\, b_1[m].

    Exact everywhere, since the :math:`1 \times 1` conv has no padding. A
    depthwise-separable pair is :math:`g = C`.
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
    r"""A :math:`1 \times 1` kernel followed by a fixed per-channel spatial filter, as one :math:`k \times k` kernel.

    A fixed filter :math:`S` applied to each output channel of a :math:`1 \times 1`
    conv commutes with the channel sum:

    .. math::

       \sum_t S[t] \sum_i W_1[o, i]\, x[i](p + t) = \sum_i \sum_t \underbrace{W_1[o, i]\, S[t]}_{W[o, i, t]} x[i](p + t),

    so :math:`W[o, i, u, v] = W_1[o, i]\, S[u, v]` for a shared :math:`S` of
    shape ``(k, k)``, or :math:`W_1[o, i]\, S[o, u, v]` for one filter per
    output channel (:math:`S` of shape ``(O, k, k)``). :math:`S = 1 / k^2` is a
    :math:`1 \times 1` conv then average pooling (count_include_pad) of each
    output channel.
    """
    if kernel_1x1.shape[-2:] != (1, 1):
        raise ValueError(f'expected a 1x1 kernel, got {tuple(kernel_1x1.shape[-2:])}')
    if spatial.dim() == 2:
        spatial = spatial.unsqueeze(0)
    return kernel_1x1 * spatial.unsqueeze(1)


def compose_kxk_kxk(first: KernelBias, second: KernelBias, groups: int = 1) -> KernelBias:
    r"""Sequential :math:`k_1 \times k_1` conv then :math:`k_2 \times k_2` conv (stride 1, same groups), as one conv.

    With :math:`W_1` of shape ``(M, C/g, k1, k1)`` and :math:`W_2` of shape
    ``(O, M/g, k2, k2)``, per group, taps :math:`u` of :math:`W_2` and
    :math:`a` of :math:`W_1`:

    .. math::

       y_2[o](p) = b_2[o] + \sum_m \sum_u W_2[o, m, u] \Big(b_1[m] + \sum_c \sum_a W_1[m, c, a]\, x[c](p + u + a)\Big).

    Grouping the terms by :math:`s = u + a` gives one kernel of size
    :math:`K = k_1 + k_2 - 1`, the full 2-D convolution of the two kernels:

    .. math::

       W[o, c, s] = \sum_{m, u} W_2[o, m, u]\, W_1[m, c, s - u], \qquad
       b[o] = b_2[o] + \sum_{m, u} W_2[o, m, u]\, b_1[m].

    Exact for the stack run on an input zero-padded once by :math:`P_1 + P_2`
    (the composite's padding); with each conv padding its own input, the two
    differ within :math:`P_2` pixels of the border (and the bias term as in
    :func:`compose_1x1_kxk`).
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
    r"""Depthwise :math:`k \times k` conv then a (grouped) :math:`1 \times 1` conv, as one :math:`k \times k` conv.

    The depthwise conv :math:`W_1` of shape ``(C*r, 1, k, k)`` (``groups=C``)
    makes the :math:`r` maps :math:`c r, \ldots, c r + r - 1` of input channel
    :math:`c`; the :math:`1 \times 1` conv :math:`W_2` of shape
    ``(O, C*r/g, 1, 1)`` has groups :math:`g`. Map :math:`c r + e` reads only
    channel :math:`c`, so for output :math:`o` of group :math:`j` and input
    channel :math:`c = j C/g + c'`:

    .. math::

       W[o, c', u, v] = \sum_{e < r} W_2[o, c' r + e]\, W_1[c r + e, 0, u, v], \qquad
       b[o] = b_2[o] + \sum_m W_2[o, m]\, b_1[j C r / g + m].

    Exact everywhere (the :math:`1 \times 1` conv has no padding). For
    :math:`g = 1` this is :func:`compose_kxk_1x1` with ``groups=C``, as one
    vectorized product (no loop over channels).
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
