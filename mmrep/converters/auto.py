"""Weights of any layout the converters know, into an mmrep backbone: detection and the cache.

:func:`detect` finds what a state dict holds from its keys and shapes alone:
first mmrep's own keys of some family's arch, then each family's
``detect(state) -> Detection | None`` (see below). :func:`arch_of` names the
arch of a built backbone the same way. :func:`convert_detected` converts a
detected state; :func:`write_cache` stores the result at :func:`cache_path`,
named by the source file's sha256 and :data:`CONVERTER_VERSION`, so that the
next run converts nothing (:mod:`mmrep.pretrained_init` does both).

The family interface
--------------------
Every module of :data:`mmrep.converters.FAMILY_MODULES` provides, besides
``FAMILY``, ``SOURCES``, ``ARCHS`` and ``convert``:

``detect(state) -> Detection | None``
    None unless the keys are of one of the family's source layouts; then
    the layout's name, and the arch and form found by
    :func:`mmrep.converters.common.detect_by_conversion`, which runs the
    family's ``convert(state, source, arch=None)`` on meta tensors and
    compares the result with every ``ARCHS`` backbone built on the meta
    device (no data is read). ``convert`` must accept ``arch=None``:
    convert without checking the arch.

``TIMM_MODELS`` (optional)
    timm model name -> ARCHS name, e.g. ``{'repvgg_a0': 'repvgg-a0'}``: the
    arch of ``timm://repvgg_a0.<tag>`` is known before anything is downloaded.

``AUTO_CONVERT_KWARGS`` (optional)
    extra ``convert`` arguments for detection and automatic conversion, e.g.
    RepLKNet's ``out_norm_stages=None`` (keep every stage norm: the strict
    load skips those a model has no place for).
"""
from __future__ import annotations

import os
import os.path as osp
import tempfile
from types import ModuleType
from typing import List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from mmrep.converters.common import (Conversion, ConversionError, Detection, detect_mmrep_layout,
                                     match_arch)

#: Bumped when any family's conversion gives other tensors for the same input:
#: cached conversions of older versions are then ignored (and made anew).
CONVERTER_VERSION = 1
_FORMAT = 'mmrep-converted'


def family_modules() -> List[ModuleType]:
    """Every converter family module (:data:`mmrep.converters.FAMILY_MODULES`), imported."""
    from mmrep.converters import FAMILY_MODULES, _family_module
    return [_family_module(key) for key in FAMILY_MODULES]


def family_by_name(family: str) -> ModuleType:
    """The family module whose ``FAMILY`` is ``family``."""
    for module in family_modules():
        if module.FAMILY == family:
            return module
    raise KeyError(family)


def detect(state: Mapping[str, Tensor]) -> Optional[Detection]:
    """What ``state`` holds (family, layout, arch, form), or None for a layout no family knows."""
    families = family_modules()
    for family in families:
        found = detect_mmrep_layout(family, state)
        if found is not None:
            return found
    # Layout markers of different families may overlap (timm's fused RepVGG and MobileOne
    # stems are both ``stem.reparam_conv``; RepLKNet's and timm RepViT's blocks are both
    # ``stages.0.blocks.0``): every family whose marker matches converts, and the one whose
    # keys fit an arch wins; one that cannot convert the keys is not it.
    layout_only = None
    for family in families:
        detector = getattr(family, 'detect', None)
        try:
            found = detector(state) if detector is not None else None
        except ConversionError:
            continue
        if found is not None and found.arch is not None:
            return found
        layout_only = layout_only or found
    return layout_only


def family_of(backbone: nn.Module) -> Optional[ModuleType]:
    """The converter family of an mmrep backbone (by its class), or None."""
    name = type(backbone).__name__
    for family in family_modules():
        if any(cfg.get('type') == name for cfg in family.ARCHS.values()):
            return family
    return None


def arch_of(backbone: nn.Module) -> Optional[str]:
    """The ARCHS name whose backbone has exactly ``backbone``'s keys and shapes, or None (custom)."""
    family = family_of(backbone)
    if family is None:
        return None
    return match_arch(family, backbone.state_dict(), bool(getattr(backbone, 'deploy', False)))


def timm_arch(model: str) -> Optional[Tuple[str, str]]:
    """``(FAMILY, arch)`` of a timm model name from the families' ``TIMM_MODELS``, or None."""
    for family in family_modules():
        arch = getattr(family, 'TIMM_MODELS', {}).get(model)
        if arch is not None:
            return family.FAMILY, arch
    return None


def convert_detected(state: Mapping[str, Tensor], detection: Detection) -> Conversion:
    """Convert ``state`` of the detected layout to mmrep keys (no arch check: the load checks)."""
    family = family_by_name(detection.family)
    return family.convert(dict(state), detection.source, None,
                          **getattr(family, 'AUTO_CONVERT_KWARGS', {}))


# ---------------------------------------------------------------- the cache


def cache_path(converted_dir: str, source_sha256: str, prefix: Optional[str],
               ema: bool = False) -> str:
    """The cached conversion of a source file: its sha256, what was taken of it (prefix, EMA
    weights), the converter version."""
    part = (f'-{prefix.strip(".")}' if prefix else '') + ('-ema' if ema else '')
    return osp.join(converted_dir, f'{source_sha256[:16]}{part}-c{CONVERTER_VERSION}.pth')


def save_atomic(obj, path: str) -> None:
    """``torch.save`` to a unique temporary name in ``path``'s directory, then rename.

    Nobody ever reads a half-written file; concurrent writers (DDP ranks)
    each rename a complete one.
    """
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=osp.dirname(osp.abspath(path)),
                               prefix=f'.{osp.basename(path)}.', suffix='.part')
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def compact(tensor: Tensor) -> Tensor:
    """A tensor that saves only its own elements (a view would save its whole storage)."""
    tensor = tensor.detach()
    if tensor.untyped_storage().nbytes() != tensor.nbytes or not tensor.is_contiguous():
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    return tensor


def write_cache(path: str, conversion: Conversion, detection: Detection, source_name: str,
                source_sha256: str) -> None:
    """Save a conversion at ``path`` (temporary name, then rename) with what it holds in its meta."""
    from mmrep.version import __version__
    meta = dict(format=_FORMAT, family=detection.family, source=detection.source,
                arch=detection.arch, deploy=conversion.deploy, converted_from=source_name,
                source_sha256=source_sha256, converter_version=CONVERTER_VERSION,
                mmrep_version=__version__, dropped=list(conversion.dropped))
    save_atomic({'state_dict': {k: compact(v) for k, v in conversion.state_dict.items()},
                 'meta': meta}, path)


def read_cache_meta(meta: Mapping) -> Optional[Detection]:
    """The detection stored with a cached conversion, None if ``meta`` is not of one."""
    if meta.get('format') != _FORMAT:
        return None
    return Detection(meta['family'], meta['source'], meta['arch'], bool(meta['deploy']))
