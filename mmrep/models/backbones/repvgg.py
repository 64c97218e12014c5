"""RepVGG backbone for detection and segmentation: a plain 3x3-conv VGG after fusion."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

from torch import nn

from mmrep.blocks.repvgg import RepVGGBlock
from mmrep.models.backbones.base import RepBackbone, make_norm_layer, resolve_arch

# The official RepVGG counts its blocks from 1 at the first block of stage 1
# (the stem is layer 0) and makes every even layer up to 26 grouped in the g2/g4 models.
_GROUPWISE_LAYERS = range(2, 27, 2)
_G2 = {layer: 2 for layer in _GROUPWISE_LAYERS}
_G4 = {layer: 4 for layer in _GROUPWISE_LAYERS}
_DEPTHS_A = (2, 4, 14, 1)
_DEPTHS_B = (4, 6, 16, 1)


def _arch(num_blocks, width_factor, group_layer_map=None, use_se=False) -> dict:
    return dict(num_blocks=num_blocks, width_factor=width_factor,
                group_layer_map=group_layer_map, use_se=use_se)


class RepVGG(RepBackbone):
    """RepVGG backbone (Ding et al., CVPR 2021) with outputs at strides 4/8/16/32.

    The stem is one stride-2 block ``in_channels -> min(64, 64a)``; stage ``i``
    starts with a stride-2 block and has widths ``64a, 128a, 256a, 512b``
    (``a, b`` = ``width_factor``). Every block is a :class:`RepVGGBlock`,
    so :meth:`reparameterize` turns the network into a stack of 3x3 convs
    and ReLUs (plus SE gates for D2se).

    Args:
        arch: a name from :attr:`arch_settings` (A0 ... B3g4, D2se) or a dict
            with ``num_blocks`` (4 ints), ``width_factor`` (4 floats) and
            optionally ``group_layer_map`` (``{layer_id: groups}``, layer ids
            counted from 1 at the first block of stage 1) and ``use_se``.
        in_channels: input image channels.
        out_indices: stages whose outputs are returned (0..3: strides 4/8/16/32).
        frozen_stages: -1 freezes nothing, 0 the stem, ``i`` the stem and stages 1..i.
        norm_cfg: mmcv norm config of every branch norm, e.g. ``dict(type='SyncBN')``.
        norm_eval: keep the norms in eval mode while training.
        with_cp: activation checkpointing per block.
        quant_friendly: QARepVGG (arXiv 2212.01593): every block has a 3x3
            conv + BN, a 1x1 conv without BN, an identity without BN where it
            exists, and one BN after the sum. Its fused network quantizes to
            INT8 with little loss; it is the same plain network as RepVGG's.
        deploy: build the fused network (load a fused checkpoint into it).
        init_cfg: mmengine init config.

    Attributes:
        out_channels: the four stage widths, e.g. ``[48, 96, 192, 1280]`` for A0.
    """

    #: Blocks per stage, width multipliers, grouped layers and SE of each published arch, by name.
    arch_settings: Dict[str, dict] = {
        'A0': _arch(_DEPTHS_A, (0.75, 0.75, 0.75, 2.5)),
        'A1': _arch(_DEPTHS_A, (1, 1, 1, 2.5)),
        'A2': _arch(_DEPTHS_A, (1.5, 1.5, 1.5, 2.75)),
        'B0': _arch(_DEPTHS_B, (1, 1, 1, 2.5)),
        'B1': _arch(_DEPTHS_B, (2, 2, 2, 4)),
        'B1g2': _arch(_DEPTHS_B, (2, 2, 2, 4), _G2),
        'B1g4': _arch(_DEPTHS_B, (2, 2, 2, 4), _G4),
        'B2': _arch(_DEPTHS_B, (2.5, 2.5, 2.5, 5)),
        'B2g2': _arch(_DEPTHS_B, (2.5, 2.5, 2.5, 5), _G2),
        'B2g4': _arch(_DEPTHS_B, (2.5, 2.5, 2.5, 5), _G4),
        'B3': _arch(_DEPTHS_B, (3, 3, 3, 5)),
        'B3g2': _arch(_DEPTHS_B, (3, 3, 3, 5), _G2),
        'B3g4': _arch(_DEPTHS_B, (3, 3, 3, 5), _G4),
        'D2se': _arch((8, 14, 24, 1), (2.5, 2.5, 2.5, 5), use_se=True),
    }

    def __init__(self, arch: Union[str, dict] = 'A0', in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_cfg: Optional[dict] = dict(type='BN', requires_grad=True),
                 norm_eval: bool = False, with_cp: bool = False, deploy: bool = False,
                 quant_friendly: bool = False, init_cfg=None):
        super().__init__(out_indices=out_indices, frozen_stages=frozen_stages,
                         norm_eval=norm_eval, with_cp=with_cp, deploy=deploy,
                         init_cfg=init_cfg)
        arch = resolve_arch('RepVGG', arch, self.arch_settings, ('num_blocks', 'width_factor'),
                            dict(group_layer_map=None, use_se=False),
                            per_stage=('num_blocks', 'width_factor'), depths='num_blocks')
        self.arch = arch
        self.quant_friendly = quant_friendly
        num_blocks, factors = arch['num_blocks'], arch['width_factor']
        group_layer_map = arch.get('group_layer_map') or {}
        self.out_channels = [int(base * f) for base, f in zip((64, 128, 256, 512), factors)]

        block = dict(use_se=arch.get('use_se', False), norm_layer=make_norm_layer(norm_cfg),
                     act_layer=nn.ReLU, quant_friendly=quant_friendly, deploy=deploy)
        width = min(64, self.out_channels[0])
        self.stem = RepVGGBlock(in_channels, width, stride=2, **block)
        self.stages = nn.ModuleList()
        layer_id = 1
        for depth, out_width in zip(num_blocks, self.out_channels):
            blocks = []
            for i in range(depth):
                blocks.append(RepVGGBlock(width, out_width, stride=2 if i == 0 else 1,
                                          groups=group_layer_map.get(layer_id, 1), **block))
                width = out_width
                layer_id += 1
            self.stages.append(nn.Sequential(*blocks))
        self._freeze_stages()
