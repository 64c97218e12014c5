"""A PAFPN of identity-free re-param convs with mmdet FPN's interface.

Drop-in for ``FPN`` in any mmdet config (RetinaNet, Mask R-CNN, FCOS, ...):
same ``in_channels``/``out_channels``/``num_outs``/``start_level``/
``end_level``/``add_extra_convs`` semantics, but a YOLOv7/v9-style path
aggregation network in which every 3x3 conv is a
:class:`~mmrep.blocks.repconvn.RepConvN`, so after fusion the neck is plain
3x3 and 1x1 convs with activations, without a single BatchNorm.
"""
from __future__ import annotations

from functools import partial
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn

from mmrep.blocks.base import ConvBN
from mmrep.blocks.repconvn import RepConvN, RepNCSP
from mmrep.models.backbones.base import check_choice, make_norm_layer
from mmrep.reparam import reparameterize_model

ACTIVATIONS = {'SiLU': nn.SiLU, 'ReLU': nn.ReLU}
EXTRA_CONV_SOURCES = ('on_input', 'on_lateral', 'on_output')


class RepPAFPN(BaseModule):
    """Path aggregation FPN of :class:`~mmrep.blocks.repconvn.RepConvN` blocks.

    Levels ``start_level .. end_level`` of the backbone each get a lateral
    1x1 ConvBN+act to ``out_channels``. The top-down path upsamples the level
    above, concatenates it with the lateral and mixes them with a
    :class:`~mmrep.blocks.repconvn.RepNCSP`; the bottom-up path downsamples
    with a stride-2 ``RepConvN``, concatenates with the top-down map and
    mixes with another ``RepNCSP``. Levels beyond the backbone's are stride-2
    ``RepConvN`` convs (``add_extra_convs``) or stride-2 max-pools, as in FPN.

    Args:
        in_channels: channels of every backbone output (all of them, as FPN).
        out_channels: channels of every output level.
        num_outs: number of output levels.
        start_level: first backbone level used.
        end_level: last backbone level used (inclusive); -1 is the last one.
            Extra levels need ``end_level`` -1.
        add_extra_convs: False (max-pool the last output), True (=
            ``'on_input'``), ``'on_input'``, ``'on_lateral'`` or
            ``'on_output'``: the source of the first extra conv, as FPN.
        relu_before_extra_convs: apply ReLU before the second and later
            extra convs, as FPN (FCOS sets it).
        num_csp_blocks: bottlenecks in each ``RepNCSP``.
        upsample_cfg: ``F.interpolate`` options of the top-down path; without
            ``scale_factor`` the upper map takes the lower map's size.
        norm_cfg: mmcv norm config of every branch norm, e.g. ``dict(type='SyncBN')``.
        act_cfg: ``dict(type='SiLU')`` (YOLOv7/v9) or ``dict(type='ReLU')``;
            other keys (``inplace``) go to the activation.
        quant_friendly: every ``RepConvN`` in QARepVGG's layout (3x3 conv + BN,
            1x1 conv without BN, one BN after the sum), which keeps INT8
            accuracy after fusion; the fused neck is the same.
        deploy: build the fused neck (load a fused checkpoint into it).
        init_cfg: mmengine init config; Xavier on convs by default, as FPN.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int,
                 start_level: int = 0, end_level: int = -1,
                 add_extra_convs: Union[bool, str] = False,
                 relu_before_extra_convs: bool = False, num_csp_blocks: int = 1,
                 upsample_cfg: dict = dict(mode='nearest'),
                 norm_cfg: dict = dict(type='BN', requires_grad=True),
                 act_cfg: dict = dict(type='SiLU'), deploy: bool = False,
                 quant_friendly: bool = False, init_cfg=dict(type='Xavier', layer='Conv2d', distribution='uniform')):
        super().__init__(init_cfg=init_cfg)
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_ins = len(self.in_channels)
        self.num_outs = num_outs
        self.start_level = start_level
        self.end_level = end_level
        self.relu_before_extra_convs = relu_before_extra_convs
        self.upsample_cfg = dict(upsample_cfg)
        self.deploy = deploy
        self.quant_friendly = quant_friendly
        self.backbone_end_level = self._check_levels()
        if add_extra_convs is True:
            add_extra_convs = 'on_input'
        elif add_extra_convs is not False:
            check_choice('add_extra_convs', add_extra_convs, (False, True) + EXTRA_CONV_SOURCES)
        self.add_extra_convs = add_extra_convs

        act_cfg = dict(act_cfg)
        act_type = act_cfg.pop('type', None)
        check_choice('act_cfg type', act_type, list(ACTIVATIONS))
        layer = dict(act_layer=partial(ACTIVATIONS[act_type], **act_cfg),
                     norm_layer=make_norm_layer(norm_cfg), deploy=deploy)
        csp = dict(layer, num_blocks=num_csp_blocks, quant_friendly=quant_friendly)
        rep = dict(layer, quant_friendly=quant_friendly)

        levels = range(start_level, self.backbone_end_level)
        self.lateral_convs = nn.ModuleList(
            ConvBN(self.in_channels[i], out_channels, 1, **layer) for i in levels)
        # one block per pair of neighbouring levels, lowest pair first
        pairs = range(len(levels) - 1)
        self.top_down_blocks = nn.ModuleList(
            RepNCSP(2 * out_channels, out_channels, **csp) for _ in pairs)
        self.downsamples = nn.ModuleList(
            RepConvN(out_channels, out_channels, stride=2, **rep) for _ in pairs)
        self.bottom_up_blocks = nn.ModuleList(
            RepNCSP(2 * out_channels, out_channels, **csp) for _ in pairs)
        self.extra_convs = nn.ModuleList()
        if self.add_extra_convs:
            for i in range(num_outs - len(levels)):
                source = (self.in_channels[self.backbone_end_level - 1]
                          if i == 0 and self.add_extra_convs == 'on_input' else out_channels)
                self.extra_convs.append(RepConvN(source, out_channels, stride=2, **rep))

    def _check_levels(self) -> int:
        """FPN's level rules, with messages; returns the backbone end level (exclusive)."""
        setting = (f'in_channels {self.in_channels}, start_level {self.start_level}, '
                     f'end_level {self.end_level}, num_outs {self.num_outs}')
        if self.end_level in (-1, self.num_ins - 1):
            end = self.num_ins
            if not 0 <= self.start_level < end or self.num_outs < end - self.start_level:
                raise ValueError(f'RepPAFPN needs 0 <= start_level < {end} and at least one '
                                 f'output per used level: {setting}')
        else:
            end = self.end_level + 1
            if (not 0 <= self.start_level < end <= self.num_ins
                    or self.num_outs != end - self.start_level):
                raise ValueError('with end_level before the last level RepPAFPN adds no extra '
                                 'level: num_outs must be end_level - start_level + 1; '
                                 f'{setting}')
        return end

    def _check_inputs(self, inputs: Sequence[torch.Tensor]) -> None:
        given = [x.shape[1] for x in inputs]
        if given != self.in_channels:
            raise ValueError(f'RepPAFPN expects in_channels {self.in_channels} but the '
                             f'backbone gave {given}; set the neck in_channels to the '
                             "backbone's output channels")

    def _upsample(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if 'scale_factor' in self.upsample_cfg:
            return F.interpolate(x, **self.upsample_cfg)
        return F.interpolate(x, size=like.shape[-2:], **self.upsample_cfg)

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """Fuse the backbone levels into ``num_outs`` maps of ``out_channels`` channels."""
        self._check_inputs(inputs)
        laterals = [conv(inputs[self.start_level + i])
                    for i, conv in enumerate(self.lateral_convs)]

        # top-down: from the coarsest level to the finest
        top_down: List[torch.Tensor] = [laterals[-1]]
        for i in range(len(laterals) - 2, -1, -1):
            upper = self._upsample(top_down[0], laterals[i])
            top_down.insert(0, self.top_down_blocks[i](torch.cat([upper, laterals[i]], 1)))

        # bottom-up: from the finest level to the coarsest
        outs = [top_down[0]]
        for i, (down, block) in enumerate(zip(self.downsamples, self.bottom_up_blocks)):
            lower = down(outs[-1])
            if lower.shape[-2:] != top_down[i + 1].shape[-2:]:
                # a backbone that floors odd sizes: stride-2 convs ceil them
                lower = F.interpolate(lower, size=top_down[i + 1].shape[-2:])
            outs.append(block(torch.cat([lower, top_down[i + 1]], 1)))

        if not self.add_extra_convs:
            while len(outs) < self.num_outs:
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        elif self.extra_convs:
            source = {'on_input': inputs[self.backbone_end_level - 1],
                      'on_lateral': laterals[-1], 'on_output': outs[-1]}[self.add_extra_convs]
            outs.append(self.extra_convs[0](source))
            for conv in self.extra_convs[1:]:
                outs.append(conv(F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]))
        return tuple(outs)

    def reparameterize(self) -> None:
        """Fuse every block in place (see :func:`mmrep.reparameterize_model`)."""
        reparameterize_model(self, inplace=True)
        self.deploy = True

    # the name mmdeploy and mmpretrain use
    switch_to_deploy = reparameterize
