"""Official OREPA-ResNet checkpoints (JUGGHM/OREPA_CVPR2022) -> mmrep ``OREPAResNet``.

The official ``models/resnet.py`` built with ``CONV_BN_IMPL='OREPA'`` has the
same branches as mmrep; its keys map by renaming, with three exceptions:

- the constant buffers ``weight_orepa_avg_avg``, ``weight_orepa_prior`` and
  ``id_tensor`` are dropped (mmrep rebuilds them as non-persistent buffers);
- the 7x7 stem (``OREPA_LargeConv``) chains its three generated 3x3 kernels
  with ``F.conv2d`` (a cross-correlation), while mmrep composes them as a true
  convolution (:func:`mmrep.fusion.compose_kxk_kxk`). Correlating with ``W``
  is convolving with ``W`` mirrored, so the official stem equals the mmrep
  stem whose later generated kernels (layers 1, 2) are the official ones
  mirrored. Each branch of an OREPA kernel mirrors exactly with its own
  parameters: ``origin``, the ``k x k`` of ``1x1_kxk`` and the depthwise ``k x k``
  of ``dws`` are flipped; ``avg`` and ``1x1`` are symmetric; the ``prior``
  filter of output ``o`` (a cosine of frequency ``f``) mirrors to
  ``(-1)^f`` times itself, so its ``1x1`` row ``o`` takes that sign;
- with ``groups > 1`` the official depthwise-separable ``1x1`` stores output
  channel ``j * O/g + o`` (group ``j``) at row ``o * g + j``.

Deploy checkpoints (official ``convert.py``: ``or_large_reparam``,
``orepa_reparam``, ``or1x1_reparam``, the basic blocks' ``shortcut.conv``)
hold the final kernels and only need renaming, into a ``deploy=True`` model.
"""
from __future__ import annotations

import re
import sys
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from mmrep.blocks.orepa import DWS_EXPANSION, frequency_prior
from mmrep.converters.common import (Conversion, ConversionError, Detection, check_request,
                                     describe_against_arch, detect_by_conversion)
from mmrep.models.backbones.orepa_resnet import OREPABottleneck, OREPAResNet

FAMILY = 'orepa_resnet'
SOURCES = ('official',)
ARCHS = {f'orepa-resnet{depth}': dict(type='OREPAResNet', depth=depth)
         for depth in sorted(OREPAResNet.arch_settings)}

# official leaf -> mmrep kernel_gen leaf (OREPA, then OREPA_1x1; 'vector' serves both)
KERNEL_LEAVES = {
    'weight_orepa_origin': 'weight_origin',
    'weight_orepa_avg_conv': 'weight_avg',
    'weight_orepa_pfir_conv': 'weight_prior',
    'weight_orepa_1x1_kxk_idconv1': 'weight_1x1_kxk_first',
    'weight_orepa_1x1_kxk_conv2': 'weight_1x1_kxk_second',
    'weight_orepa_1x1': 'weight_1x1',
    'weight_orepa_gconv_dw': 'weight_dw',
    'weight_orepa_gconv_pw': 'weight_pw',
    'weight_or1x1_origin': 'weight_origin',
    'weight_or1x1_l2i_conv1': 'weight_first',
    'weight_or1x1_l2i_conv2': 'weight_second',
    'vector': 'scales',
}
CONSTANT_BUFFERS = ('weight_orepa_avg_avg', 'weight_orepa_prior', 'id_tensor')
FUSED_CONVS = ('orepa_reparam', 'or1x1_reparam', 'or_large_reparam')
HEAD_PREFIXES = ('linear.',)

_STEM_LAYER = re.compile(r'stage0\.conv1\.weight(\d+)\.(.+)')
_STEM = re.compile(r'stage0\.conv1\.(.+)')
_BLOCK_CONV = re.compile(r'stage([1-4])\.(\d+)\.(conv[123]|shortcut)\.(.+)')


def _locate(key: str) -> Optional[Tuple[str, str, str, bool]]:
    """``(kernel_gen prefix, module prefix, leaf, mirror)`` of an official key, or None."""
    match = _STEM_LAYER.fullmatch(key)
    if match:
        layer = int(match.group(1))
        # weight-only OREPA layers: kernel leaves only, no module of their own
        return f'stem.0.kernel_gen.layers.{layer}', '', match.group(2), layer > 0
    match = _STEM.fullmatch(key)
    if match:
        return 'stem.0.kernel_gen', 'stem.0', match.group(1), False
    match = _BLOCK_CONV.fullmatch(key)
    if match:
        stage, block, conv, leaf = match.groups()
        prefix = f'stages.{int(stage) - 1}.{block}.{conv}'
        return f'{prefix}.kernel_gen', prefix, leaf, False
    return None


def orepa_kernel_from_official(leaves: Dict[str, Tensor], mirror: bool = False,
                               where: str = 'an OREPA kernel') -> Dict[str, Tensor]:
    """One official OREPA / OREPA_1x1 kernel generator's leaves -> mmrep ``kernel_gen`` leaves.

    ``leaves`` maps official leaf names (``weight_orepa_origin``, ``vector``, ...;
    no constant buffers) to tensors. The depthwise-separable ``1x1`` is
    de-interleaved for ``groups > 1``; ``mirror=True`` returns the generator
    of the spatially mirrored kernel (see the module docstring).
    """
    unknown = sorted(set(leaves) - set(KERNEL_LEAVES))
    if unknown:
        raise ConversionError(f'{where}: unrecognised official leaves {unknown}')
    out = {KERNEL_LEAVES[name]: value for name, value in leaves.items()}
    if 'weight_orepa_origin' not in leaves:  # OREPA_1x1: nothing spatial, no groups
        return out
    required = ('weight_orepa_origin', 'weight_orepa_pfir_conv', 'weight_orepa_1x1_kxk_conv2',
                'weight_orepa_gconv_dw', 'weight_orepa_gconv_pw')
    missing = [name for name in required if name not in leaves]
    if missing:
        raise ConversionError(f'{where}: the official OREPA kernel misses {missing}')
    origin, dw, pw = (leaves[name] for name in
                      ('weight_orepa_origin', 'weight_orepa_gconv_dw', 'weight_orepa_gconv_pw'))
    in_channels = dw.shape[0] // DWS_EXPANSION
    groups = in_channels // origin.shape[1]
    out_channels = pw.shape[0]
    if groups * origin.shape[1] != in_channels or out_channels % groups:
        raise ConversionError(f'{where}: inconsistent shapes {tuple(origin.shape)} (origin), '
                              f'{tuple(dw.shape)} (dw), {tuple(pw.shape)} (pw)')
    out['weight_pw'] = (pw.reshape(out_channels // groups, groups, -1).transpose(0, 1)
                        .reshape(pw.shape).contiguous())
    if mirror:
        for name in ('weight_origin', 'weight_1x1_kxk_second', 'weight_dw'):
            out[name] = out[name].flip(-2, -1)
        # cos(pi f (k - p) / k) = (-1)^f cos(pi f p / k): each prior filter mirrors to
        # +-itself, the sign read off mmrep's own prior (a row of zeros takes +1)
        prior = frequency_prior(out_channels, origin.shape[-1])
        mirrored = prior.flip(-2, -1)
        sign = torch.where(torch.isclose(mirrored, prior, atol=1e-6).flatten(1).all(1), 1., -1.)
        if not torch.allclose(mirrored, sign[:, None, None] * prior, atol=1e-6):
            raise AssertionError('the frequency prior does not mirror to +-itself')
        out['weight_prior'] = out['weight_prior'] * sign.to(out['weight_prior']).reshape(
            -1, 1, 1, 1)
    return out


def _block_layout(state: Dict[str, Tensor]) -> Tuple[bool, Tuple[int, ...]]:
    """(bottleneck?, blocks per stage) of converted mmrep keys."""
    counts = [0] * 4
    bottleneck = False
    for key in state:
        match = re.match(r'stages\.(\d)\.(\d+)\.(conv3)?', key)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            counts[stage] = max(counts[stage], block + 1)
            bottleneck |= match.group(3) is not None
    return bottleneck, tuple(counts)


def _check_arch(state: Dict[str, Tensor], arch: str, depth: int, deploy: bool) -> None:
    block, num_blocks = OREPAResNet.arch_settings[depth]
    bottleneck, counts = _block_layout(state)
    found = [d for d, (b, n) in OREPAResNet.arch_settings.items()
             if (b is OREPABottleneck) == bottleneck and tuple(n) == counts]
    if (block is OREPABottleneck) != bottleneck or tuple(num_blocks) != counts:
        kind = 'bottleneck' if bottleneck else 'basic'
        what = f'OREPA-ResNet-{found[0]}' if found else 'no OREPA-ResNet'
        raise ConversionError(
            f'the checkpoint has {kind} blocks {counts} per stage ({what}), but arch {arch!r} '
            f'needs {"bottleneck" if block is OREPABottleneck else "basic"} blocks '
            f'{tuple(num_blocks)}: '
            + describe_against_arch(sys.modules[__name__], state, arch, deploy))


def detect(state: Dict[str, Tensor]) -> Optional[Detection]:
    """Depth and form of official OREPA-ResNet weights; None if not OREPA-ResNet."""
    if any(key.startswith('stage0.conv1.') for key in state):
        return detect_by_conversion(sys.modules[__name__], state, 'official')
    return None


def convert(state: Dict[str, Tensor], source: str, arch: Optional[str]) -> Conversion:
    """Official OREPA-ResNet weights (train or deploy form) -> mmrep ``OREPAResNet`` keys.

    ``state`` is the official model's state dict without wrappers. Train form
    gives keys for ``OREPAResNet(depth)``, deploy form (official ``convert.py``)
    for ``OREPAResNet(depth, deploy=True)``. The classifier (``linear``) and
    the constant buffers are dropped and listed in ``Conversion.dropped``.
    """
    arch = check_request('OREPA-ResNet', SOURCES, ARCHS, source, arch)
    dropped: List[str] = []
    unknown: List[str] = []
    kernels: Dict[str, Dict[str, Tensor]] = {}  # kernel_gen prefix -> official leaves
    mirrored: Dict[str, bool] = {}
    out: Dict[str, Tensor] = {}
    fused, unfused = [], []
    for key, value in state.items():
        if key.startswith(HEAD_PREFIXES):
            dropped.append(key)
            continue
        located = _locate(key)
        if located is None:
            unknown.append(key)
            continue
        kernel_prefix, module_prefix, leaf, mirror = located
        head, _, rest = leaf.partition('.')
        if leaf in CONSTANT_BUFFERS:
            dropped.append(key)
        elif leaf in KERNEL_LEAVES:
            kernels.setdefault(kernel_prefix, {})[leaf] = value
            mirrored[kernel_prefix] = mirror
            unfused.append(key)
        elif module_prefix and head == 'bn' and rest:
            out[f'{module_prefix}.bn.{rest}'] = value
            unfused.append(key)
        elif module_prefix and head in FUSED_CONVS + ('conv',) and rest in ('weight', 'bias'):
            # 'conv' is the plain ConvBN shortcut of the basic blocks (bias once fused)
            out[f'{module_prefix}.conv.{rest}'] = value
            if head != 'conv' or rest == 'bias':
                fused.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f'{len(unknown)} keys are not official OREPA-ResNet keys, e.g. '
                              f'{unknown[:5]}')
    if fused and unfused:
        raise ConversionError(f'the checkpoint mixes the deploy form (e.g. {fused[:2]}) and '
                              f'the training form (e.g. {unfused[:2]})')
    if not fused and not unfused:
        raise ConversionError('the checkpoint holds no OREPA-ResNet backbone weights')
    for prefix, leaves in kernels.items():
        for leaf, value in orepa_kernel_from_official(leaves, mirrored[prefix], prefix).items():
            out[f'{prefix}.{leaf}'] = value
    if arch is not None:
        _check_arch(out, arch, ARCHS[arch]['depth'], bool(fused))
    return Conversion(out, dropped, deploy=bool(fused))
