"""RepLKNet backbone (Ding et al., CVPR 2022) for detection and segmentation."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from mmrep.blocks.base import ConvBN, NormLayer
from mmrep.blocks.replk import ConvFFN, FoldableNorm, RepLKBlock
from mmrep.models.backbones.base import NUM_STAGES, RepBackbone, check_choice, make_norm_layer

ARCH_KEYS = ('large_kernel_sizes', 'layers', 'channels', 'small_kernel', 'dw_ratio', 'ffn_ratio')


class RepLKNet(RepBackbone):
    """RepLKNet: depthwise large kernels (up to 31x31) re-parameterized with small ones.

    Stem (stride 4): conv3x3 s2, DW3x3, conv1x1, DW3x3 s2, each conv + BN +
    ReLU. Stage ``i`` is ``layers[i]`` pairs of
    :class:`~mmrep.blocks.replk.RepLKBlock` and
    :class:`~mmrep.blocks.replk.ConvFFN`. Between stages a transition
    (conv1x1 + BN + ReLU to the next width, DW3x3 s2 + BN + ReLU) halves the
    resolution; it is the first module of the next stage here, so
    ``stages[i]`` ends at stride ``4 * 2**i`` with the official feature map
    (the official code returns stage outputs before the transition).

    After :meth:`reparameterize` the network holds no BatchNorm: small
    kernels are merged into the large ones, every conv-BN pair is folded, the
    pre-norms of the blocks are folded into their first ``1x1`` conv, and
    the optional output norms become depthwise ``1x1`` convs.

    Args:
        arch: ``'31B'``, ``'31L'``, ``'XL'``, or a dict with the keys of
            ``arch_settings`` entries.
        in_channels: channels of the input image.
        out_indices: stage outputs to return (strides 4/8/16/32).
        drop_path_rate: stochastic depth rate, rising linearly from 0 over the
            block pairs (both blocks of a pair share it, as in the official code).
        norm_cfg: mmcv norm config of every norm (``dict(type='SyncBN')`` for
            multi-GPU training).
        norm_intermediate_features: add a norm to every returned feature map
            (the official setting for RepLKNet-XL on COCO and ADE20K).
        layers: override the number of block pairs per stage (small test or
            ablation variants); None keeps the arch's.
        frozen_stages, norm_eval, with_cp, deploy, init_cfg: see
            :class:`~mmrep.models.backbones.base.RepBackbone`.

    Attributes:
        out_channels: channels of the returned feature maps, in order.

    State dict (training): ``stem.{0..3}.{conv,bn}``;
    ``stages.0.{k}`` and ``stages.i.{k + 1}`` for ``i > 0`` hold the
    official ``stages.i.blocks.{k}`` (``RepLKBlock`` at even ``k``,
    ``ConvFFN`` at odd ``k``); ``stages.{i + 1}.0.{0,1}.{conv,bn}`` is the
    official ``transitions.i``; ``out_norms.i.bn`` the official
    ``stages.i.norm``. Deploy: every ``{conv,bn}`` pair becomes
    ``conv.{weight,bias}``, ``large_kernel.lkb_reparam.{weight,bias}``
    replaces ``large_kernel.{lkb_origin,small_conv}``, the pre-norms
    ``prelkb_bn``/``preffn_bn`` disappear and ``out_norms.i.bn`` becomes
    ``out_norms.i.conv.{weight,bias}``.
    """

    # ImageNet checkpoints have no output norms (norm_intermediate_features is a
    # downstream setting): loading one keeps these layers' initialisation.
    pretrained_optional_prefixes = ('out_norms.',)

    arch_settings = {
        '31B': dict(large_kernel_sizes=(31, 29, 27, 13), layers=(2, 2, 18, 2),
                    channels=(128, 256, 512, 1024), small_kernel=5, dw_ratio=1, ffn_ratio=4),
        '31L': dict(large_kernel_sizes=(31, 29, 27, 13), layers=(2, 2, 18, 2),
                    channels=(192, 384, 768, 1536), small_kernel=5, dw_ratio=1, ffn_ratio=4),
        'XL': dict(large_kernel_sizes=(27, 27, 27, 13), layers=(2, 2, 18, 2),
                   channels=(256, 512, 1024, 2048), small_kernel=None, dw_ratio=1.5,
                   ffn_ratio=4),
    }

    def __init__(self, arch: Union[str, dict] = '31B', in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), drop_path_rate: float = 0.3,
                 norm_cfg: Optional[dict] = dict(type='BN', requires_grad=True),
                 norm_intermediate_features: bool = False,
                 layers: Optional[Sequence[int]] = None, frozen_stages: int = -1,
                 norm_eval: bool = False, with_cp: bool = False, deploy: bool = False,
                 init_cfg=None):
        super().__init__(out_indices, frozen_stages, norm_eval, with_cp, deploy, init_cfg)
        if isinstance(arch, str):
            check_choice('RepLKNet arch', arch, list(self.arch_settings))
            arch = self.arch_settings[arch]
        elif not isinstance(arch, dict) or set(arch) != set(ARCH_KEYS):
            raise ValueError(f'a custom RepLKNet arch must be a dict with keys {ARCH_KEYS}, '
                             f'got {arch!r}')
        arch = dict(arch, layers=tuple(layers if layers is not None else arch['layers']))
        for key in ('large_kernel_sizes', 'layers', 'channels'):
            if len(arch[key]) != NUM_STAGES:
                raise ValueError(f'{key} needs {NUM_STAGES} values, got {arch[key]}')
        if min(arch['layers']) < 1:
            raise ValueError(f'every stage needs at least one block pair, got {arch["layers"]}')
        self.arch = arch
        channels = arch['channels']
        norm_layer = make_norm_layer(norm_cfg)
        self.norm_intermediate_features = norm_intermediate_features
        self.out_channels = tuple(channels[i] for i in self.out_indices)

        stem_width = channels[0]
        self.stem = nn.Sequential(
            self._conv_relu(in_channels, stem_width, 3, 2, 1, norm_layer),
            self._conv_relu(stem_width, stem_width, 3, 1, stem_width, norm_layer),
            self._conv_relu(stem_width, stem_width, 1, 1, 1, norm_layer),
            self._conv_relu(stem_width, stem_width, 3, 2, stem_width, norm_layer))

        # on the CPU: the rates are Python floats, also when built under torch.device('meta')
        rates = iter(torch.linspace(0, drop_path_rate, sum(arch['layers']), device='cpu').tolist())
        self.stages = nn.ModuleList()
        for i, (num_pairs, lk_size, width) in enumerate(
                zip(arch['layers'], arch['large_kernel_sizes'], channels)):
            blocks = []
            if i > 0:
                blocks.append(nn.Sequential(
                    self._conv_relu(channels[i - 1], width, 1, 1, 1, norm_layer),
                    self._conv_relu(width, width, 3, 2, width, norm_layer)))
            for _ in range(num_pairs):
                rate = next(rates)
                blocks += [
                    RepLKBlock(width, int(width * arch['dw_ratio']), lk_size,
                               arch['small_kernel'], rate, norm_layer, deploy=deploy),
                    ConvFFN(width, int(width * arch['ffn_ratio']), rate, norm_layer,
                            deploy=deploy)]
            self.stages.append(nn.Sequential(*blocks))

        # Only returned maps get a norm: an unused one would break DDP.
        self.out_norms = nn.ModuleList(
            FoldableNorm(width, norm_layer, deploy)
            if norm_intermediate_features and i in self.out_indices else nn.Identity()
            for i, width in enumerate(channels))
        # Freeze now, not only at train(): DDP wraps the model before train() and
        # would wait for gradients of a frozen stem that never come.
        self._freeze_stages()

    def _conv_relu(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                   groups: int, norm_layer: NormLayer) -> ConvBN:
        return ConvBN(in_channels, out_channels, kernel_size, stride, groups=groups,
                      norm_layer=norm_layer, act_layer=nn.ReLU, deploy=self.deploy)

    def _frozen_modules(self) -> list:
        # A frozen stage's output norm is frozen with it (as mmdet's Swin does).
        return super()._frozen_modules() + list(self.out_norms[:self.frozen_stages])

    def _stage_output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        # The norm only feeds the neck; the next stage reads the raw map.
        return self.out_norms[index](x)
