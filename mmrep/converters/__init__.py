"""Convert the pretrained checkpoints of the official repos, timm and mmpretrain to mmrep backbones.

    from mmrep.converters import convert_checkpoint
    convert_checkpoint('RepVGG-A0-train.pth', 'repvgg-a0_mmrep.pth', source='official', arch='repvgg-a0')

writes a checkpoint that ``init_cfg=dict(type='Pretrained', checkpoint=OUT)``
loads into the matching mmrep backbone with no missing and no unexpected
key (``tools/convert_weights.py`` is the command line). Every family module
(:data:`FAMILY_MODULES`) defines ``FAMILY``, ``SOURCES``, ``ARCHS`` (CLI arch
name -> mmrep backbone config) and ``convert(state, source, arch) -> Conversion``.
"""
from __future__ import annotations

import importlib
import os
import os.path as osp
from types import ModuleType

import torch
from mmengine.logging import print_log

from mmrep.checkpoint import load_checkpoint_file
from mmrep.converters.common import (Conversion, ConversionError, check_against_backbone,
                                     unwrap_checkpoint)
from mmrep.version import __version__

__all__ = ['convert_checkpoint', 'ConversionError', 'Conversion', 'FAMILIES', 'find_family',
           'load_source']

#: The first part of an arch name ('repvgg-a0' -> 'repvgg') names its family module.
FAMILY_MODULES = {
    'repvgg': 'mmrep.converters.repvgg',
    'repghostnet': 'mmrep.converters.repghostnet',
    'orepa': 'mmrep.converters.orepa_resnet',
    'replknet': 'mmrep.converters.replknet',
    'mobileone': 'mmrep.converters.mobileone',
    'repvit': 'mmrep.converters.repvit',
}


def _family_module(name: str) -> ModuleType:
    # Imported on use, so that converting RepVGG does not import the other
    # families; a family module that is missing fails here, loudly.
    return importlib.import_module(FAMILY_MODULES[name])


def __getattr__(name: str):
    if name == 'FAMILIES':  # {FAMILY: module} of every family
        modules = [_family_module(key) for key in FAMILY_MODULES]
        return {module.FAMILY: module for module in modules}
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def find_family(arch: str) -> ModuleType:
    """The family module that converts ``arch`` (case-insensitive).

    Raises a ConversionError listing the known archs for an unknown one.
    """
    arch = arch.lower()
    key = arch.split('-')[0]
    if key in FAMILY_MODULES:
        module = _family_module(key)
        if arch in module.ARCHS:
            return module
        raise ConversionError(f'unknown --arch {arch!r}; {module.FAMILY} archs: '
                              f'{", ".join(module.ARCHS)}')
    raise ConversionError(f'unknown --arch {arch!r}; archs start with '
                          f'{", ".join(k + "-" for k in FAMILY_MODULES)} '
                          '(e.g. repvgg-a0, repghostnet-1.0x, orepa-resnet50, replknet-31b, '
                          'mobileone-s0, repvit-m1.1)')


def load_source(path: str, unsafe: bool = False):
    """Load a checkpoint file (``.pth`` / ``.pth.tar`` / ``.bin`` or ``.safetensors``).

    Through mmrep's one safe loader (:func:`mmrep.checkpoint.load_checkpoint_file`):
    tensors, numeric numpy values, mmengine's and timm's training-checkpoint
    types; with ``unsafe`` full unpickling, for trusted files only. Raises
    :class:`~mmrep.checkpoint.NotACheckpointError` for a file that is not a
    PyTorch checkpoint and :class:`~mmrep.checkpoint.UntrustedCheckpointError`
    for one that holds other objects.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} does not exist')
    return load_checkpoint_file(path, map_location='cpu', trusted=True if unsafe else None)


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    # A view would save its whole storage; a tensor saved alone is saved alone.
    tensor = tensor.detach()
    if tensor.untyped_storage().nbytes() != tensor.nbytes or not tensor.is_contiguous():
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    return tensor


def check_output_path(src: str, out: str, force: bool) -> None:
    """Refuse to write onto the input, or onto an existing file unless ``force``."""
    if osp.abspath(out) == osp.abspath(src):
        raise ConversionError(f'OUT is the input {src}; choose another path')
    if osp.exists(out) and not force:
        raise FileExistsError(f'{out} exists; refusing to overwrite it (pass --force)')


def write_checkpoint(out: str, state_dict: dict, meta: dict) -> None:
    """Save ``{'state_dict', 'meta'}`` to ``out`` through a temporary file: never a half-written OUT."""
    if osp.dirname(out):
        os.makedirs(osp.dirname(out), exist_ok=True)
    tmp = out + '.part'
    try:
        torch.save({'state_dict': {k: _compact(v) for k, v in state_dict.items()},
                    'meta': meta}, tmp)
        os.replace(tmp, out)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def convert_checkpoint(src: str, out: str, source: str, arch: str, ema: bool = False,
                       force: bool = False, logger=None, unsafe: bool = False) -> dict:
    """Convert the checkpoint ``src`` of ``source`` (official / timm / mmpretrain) for ``arch``.

    Writes ``{'state_dict': ..., 'meta': ...}`` to ``out`` (refused if ``out``
    exists, unless ``force``; never onto ``src``) after checking that it loads
    strictly into the mmrep backbone ``ARCHS[arch]`` with ``deploy`` set to
    the form found in ``src``. ``ema`` takes the checkpoint's EMA weights.

    Returns the report: ``family``, ``arch``, ``source``, ``deploy``,
    ``num_tensors``, ``dropped`` (source keys left out: heads, constant
    buffers), ``notes`` and ``backbone`` (the config to use with ``out``).
    Raises :class:`ConversionError` naming the keys when the weights do not fit.
    """
    family = find_family(arch)
    arch, source = arch.lower(), source.lower()
    if source not in family.SOURCES:
        raise ConversionError(f'--from {source}: {family.FAMILY} converts from '
                              f'{", ".join(family.SOURCES)}')
    check_output_path(src, out, force)

    state, dropped, notes = unwrap_checkpoint(load_source(src, unsafe), ema=ema)
    conversion = family.convert(state, source, arch)
    backbone = dict(family.ARCHS[arch], deploy=conversion.deploy)
    check_against_backbone(conversion.state_dict, backbone, arch)

    report = dict(family=family.FAMILY, arch=arch, source=source, deploy=conversion.deploy,
                  ema=ema, num_tensors=len(conversion.state_dict),
                  dropped=dropped + list(conversion.dropped), notes=notes,
                  backbone=dict(backbone, init_cfg=dict(type='Pretrained', checkpoint=out)))
    meta = dict(report, converted_from=osp.abspath(src), mmrep_version=__version__)
    meta.pop('backbone')
    write_checkpoint(out, conversion.state_dict, meta)

    log = lambda msg: print_log(msg, logger=logger or 'current')  # noqa: E731
    log(f'{src} ({source}, {"deploy" if conversion.deploy else "training"} form) -> {out}: '
        f'{len(conversion.state_dict)} tensors for {backbone}')
    for note in notes:
        log(f'  {note}')
    if report['dropped']:
        log(f'  dropped {len(report["dropped"])} keys that the backbone does not use: '
            f'{", ".join(report["dropped"])}')
    return report
