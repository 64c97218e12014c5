"""OREPA-ResNet: a ResNet whose convs are OREPA online re-parameterized convs.

Hu et al., "Online Convolutional Re-parameterization", CVPR 2022 (official
models/resnet.py with the OREPA conv implementation). After fusion it is a
plain ResNet: every conv has a bias and no BatchNorm is left.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from mmrep.blocks.base import ConvBN, NormLayer
from mmrep.blocks.orepa import OREPA, OREPA1x1, OREPALargeConv
from mmrep.models.backbones.base import NUM_STAGES, RepBackbone, check_choice, make_norm_layer


class OREPABasicBlock(nn.Module):
    """``ReLU(conv2(conv1(x)) + shortcut(x))`` with two 3x3 :class:`OREPA` convs.

    The projection shortcut (stride or width change) is a plain 1x1
    :class:`ConvBN`, as in the official OREPA ResNet-18/34.
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1,
                 norm_layer: NormLayer = nn.BatchNorm2d, deploy: bool = False):
        super().__init__()
        out_channels = planes * self.expansion
        conv = dict(norm_layer=norm_layer, deploy=deploy)
        self.conv1 = OREPA(in_channels, planes, 3, stride, act_layer=nn.ReLU, **conv)
        self.conv2 = OREPA(planes, out_channels, 3, **conv)
        self.shortcut = (ConvBN(in_channels, out_channels, 1, stride, padding=0, **conv)
                         if stride != 1 or in_channels != out_channels else nn.Identity())
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class OREPABottleneck(nn.Module):
    """``ReLU(conv3(conv2(conv1(x))) + shortcut(x))``: OREPA 1x1, 3x3 (strided), 1x1.

    The stride is on the 3x3 (pytorch style, as the official); the
    projection shortcut is a strided :class:`OREPA1x1`.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1,
                 norm_layer: NormLayer = nn.BatchNorm2d, deploy: bool = False):
        super().__init__()
        out_channels = planes * self.expansion
        conv = dict(norm_layer=norm_layer, deploy=deploy)
        self.conv1 = OREPA1x1(in_channels, planes, act_layer=nn.ReLU, **conv)
        self.conv2 = OREPA(planes, planes, 3, stride, act_layer=nn.ReLU, **conv)
        self.conv3 = OREPA1x1(planes, out_channels, **conv)
        self.shortcut = (OREPA1x1(in_channels, out_channels, stride, **conv)
                         if stride != 1 or in_channels != out_channels else nn.Identity())
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


class OREPAResNet(RepBackbone):
    """OREPA-ResNet backbone with outputs at strides 4/8/16/32.

    Stem: a 7x7 stride-2 :class:`OREPALargeConv` (a deep linear stack of
    three 3x3 OREPA kernels) with ReLU, then a 3x3 stride-2 max pool. Stage
    ``i`` has ``base_channels * 2**i`` planes and starts with a stride-2 block
    (stride 1 for stage 0). The residual adds and ReLUs are not branches:
    they stay after fusion.

    Args:
        depth: 18 or 34 (:class:`OREPABasicBlock`), 50 or 101 (:class:`OREPABottleneck`).
        in_channels: input image channels.
        stem_channels: width of the stem.
        base_channels: planes of stage 0 (64 for the standard ResNets).
        out_indices: stages whose outputs are returned (0..3: strides 4/8/16/32).
        frozen_stages: -1 freezes nothing, 0 the stem, ``i`` the stem and stages 1..i.
        norm_cfg: mmcv norm config of every norm, e.g. ``dict(type='SyncBN')``.
        norm_eval: keep the norms in eval mode while training.
        with_cp: activation checkpointing per block.
        deploy: build the fused network (load a fused checkpoint into it).
        init_cfg: mmengine init config.

    Attributes:
        out_channels: the four stage widths, e.g. ``[256, 512, 1024, 2048]`` for
            depth 50 and ``[64, 128, 256, 512]`` for depth 18.
    """

    arch_settings = {
        18: (OREPABasicBlock, (2, 2, 2, 2)),
        34: (OREPABasicBlock, (3, 4, 6, 3)),
        50: (OREPABottleneck, (3, 4, 6, 3)),
        101: (OREPABottleneck, (3, 4, 23, 3)),
    }

    def __init__(self, depth: int = 50, in_channels: int = 3, stem_channels: int = 64,
                 base_channels: int = 64, out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_cfg: Optional[dict] = dict(type='BN', requires_grad=True),
                 norm_eval: bool = False, with_cp: bool = False, deploy: bool = False,
                 init_cfg=None):
        super().__init__(out_indices=out_indices, frozen_stages=frozen_stages,
                         norm_eval=norm_eval, with_cp=with_cp, deploy=deploy,
                         init_cfg=init_cfg)
        check_choice('OREPA-ResNet depth', depth, list(self.arch_settings))
        self.depth = depth
        block, num_blocks = self.arch_settings[depth]
        norm_layer = make_norm_layer(norm_cfg)
        self.out_channels = [base_channels * 2 ** i * block.expansion for i in range(NUM_STAGES)]

        self.stem = nn.Sequential(
            OREPALargeConv(in_channels, stem_channels, 7, stride=2, norm_layer=norm_layer,
                           act_layer=nn.ReLU, deploy=deploy),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.stages = nn.ModuleList()
        width = stem_channels
        for i, (stage_blocks, out_width) in enumerate(zip(num_blocks, self.out_channels)):
            blocks = []
            for j in range(stage_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(width, base_channels * 2 ** i, stride,
                                    norm_layer=norm_layer, deploy=deploy))
                width = out_width
            self.stages.append(nn.Sequential(*blocks))
        self._freeze_stages()
