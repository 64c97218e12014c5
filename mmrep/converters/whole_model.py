"""Whole detector / segmentor checkpoints of mmdet 2.x / mmseg 0.x -> the model of an mmrep config.

RepViT's authors released COCO Mask R-CNN and ADE20K Semantic FPN checkpoints
trained with mmdet 2.28 and mmseg 0.30 (THU-MIG/RepViT ``detection/``,
``segmentation/``). :func:`convert_whole_model` turns such a file into one
that the mmdet 3 / mmseg 1 model built from an mmrep config loads strictly:

* ``backbone.*``: the official backbone layout (RepViT's flat
  ``features.{i}`` list) is renamed by the backbone's family converter
  (:mod:`mmrep.converters.repvit`), the arch and taps being the config's.
* Everything else keeps its name. mmdet 2.28 and mmdet 3.3 name the Mask R-CNN
  FPN parts alike: ``neck.lateral_convs.{i}.conv`` / ``neck.fpn_convs.{i}.conv``
  (ConvModule), ``rpn_head.rpn_conv`` / ``rpn_cls`` / ``rpn_reg``,
  ``roi_head.bbox_head.shared_fcs.{0,1}`` / ``fc_cls`` (81 outputs, background
  last in both) / ``fc_reg`` (320), ``roi_head.mask_head.convs.{0..3}.conv`` /
  ``upsample`` (deconv) / ``conv_logits``. mmseg 0.30 and 1.2 name the Semantic
  FPN head alike: ``decode_head.scale_heads.{i}.{j}.conv`` / ``.bn``,
  ``decode_head.conv_seg``. The strict check against the built model proves it
  for the checkpoint at hand and names any key that differs.
* What moves out of the weights in mmdet 3 / mmseg 1 is configuration, not
  keys: image normalization (``img_norm_cfg`` -> the model's
  ``data_preprocessor``), and the class names (the checkpoint's
  ``meta['CLASSES']`` / ``['PALETTE']`` -> ``meta['dataset_meta']``, which
  ``init_detector`` / ``init_model`` read; both are carried over).
"""
from __future__ import annotations

import os.path as osp
import torch
from mmengine.config import Config
from mmengine.logging import print_log
from torch import nn

from mmrep.converters import (FAMILY_MODULES, _family_module, check_output_path, load_source,
                              write_checkpoint)
from mmrep.converters.common import ConversionError, first_keys
from mmrep.models.pretrained import compare_state_dict
from mmrep.models.unwrap import CheckpointLayoutError, unwrap_state_dict
from mmrep.version import __version__

__all__ = ['convert_whole_model', 'family_of_backbone', 'build_meta_model']

# mmdet 2.x / mmseg 0.x meta fields -> mmengine's dataset_meta
_DATASET_META = {'CLASSES': 'classes', 'PALETTE': 'palette'}
_VERSIONS = ('mmdet_version', 'mmseg_version', 'mmcv_version', 'mmdet', 'mmseg', 'mmcv')


def family_of_backbone(backbone_cfg: dict):
    """The converter family module and ``ARCHS`` name of an mmrep backbone config."""
    for name in FAMILY_MODULES:
        module = _family_module(name)
        for arch, spec in module.ARCHS.items():
            if all(backbone_cfg.get(k) == v for k, v in spec.items()):
                return module, arch
    raise ConversionError(f'the config\'s backbone {dict(backbone_cfg)} is no arch the '
                          'converters know (type and arch of an mmrep backbone)')


def build_meta_model(cfg: Config) -> nn.Module:
    """The model of ``cfg`` built on the meta device (shapes only, no memory, no init)."""
    from mmengine.registry import MODELS, DefaultScope
    scope = cfg.get('default_scope') or 'mmdet'
    with DefaultScope.overwrite_default_scope(scope), torch.device('meta'):
        return MODELS.build(cfg.model)


def _dataset_meta(meta: dict) -> dict:
    return {new: list(meta[old]) for old, new in _DATASET_META.items()
            if isinstance(meta.get(old), (list, tuple))}


def convert_whole_model(src: str, out: str, config: str, source: str = 'official',
                        force: bool = False, unsafe: bool = False, logger=None) -> dict:
    """Convert the whole-model checkpoint ``src`` for the model of ``config``; write ``out``.

    The backbone's keys (``backbone.*``) are converted from ``source`` by the
    backbone's family, the other keys are kept; the result must fit the
    config's model (built on the meta device) exactly, key by key and shape by
    shape, else a :class:`ConversionError` names the keys. ``out`` is refused
    if it exists (unless ``force``) and is never ``src``.

    Returns the report: ``family``, ``arch``, ``source``, ``deploy``,
    ``renamed`` (backbone tensors), ``kept`` (other tensors), ``dropped``,
    ``notes``, ``dataset_meta``.
    """
    check_output_path(src, out, force)
    cfg = Config.fromfile(config)
    backbone_cfg = cfg.model.get('backbone')
    if not backbone_cfg:
        raise ConversionError(f'{config} has no model.backbone')
    family, arch = family_of_backbone(backbone_cfg)

    checkpoint = load_source(src, unsafe)
    source_meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    try:
        state, dropped, notes = unwrap_state_dict(checkpoint, 'raw')
    except CheckpointLayoutError as err:
        raise ConversionError(str(err)) from None
    backbone = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    if not backbone:
        raise ConversionError(f'{src} has no backbone.* weights (first keys: {first_keys(state)}): '
                              'is it a whole detector / segmentor checkpoint?')
    conversion = family.convert(backbone, source, arch)
    deploy = bool(backbone_cfg.get('deploy', False))
    if conversion.deploy != deploy:
        raise ConversionError(
            f'{src} holds the {"deploy" if conversion.deploy else "training"}-form backbone but '
            f'the config builds deploy={deploy}: set model.backbone.deploy={conversion.deploy}')
    converted = {f'backbone.{k}': v for k, v in conversion.state_dict.items()}
    others = {k: v for k, v in state.items() if not k.startswith('backbone.')}
    converted.update(others)
    dropped = dropped + [f'backbone.{k}' for k in conversion.dropped]

    model = build_meta_model(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    mismatch = compare_state_dict(expected, converted)
    if mismatch:
        raise ConversionError(
            f'the converted checkpoint does not fit the model of {config}: {mismatch.describe()}. '
            f'Only backbone.* is renamed ({family.FAMILY}, {source} layout); the other keys are '
            'kept as they are, so a difference there is a neck or head of another shape '
            '(num_classes, channels) than the config\'s.')

    meta = dict(converted_from=osp.abspath(src), config=osp.abspath(config),
                family=family.FAMILY, arch=arch, source=source, deploy=deploy,
                mmrep_version=__version__)
    if isinstance(source_meta, dict):
        meta['dataset_meta'] = _dataset_meta(source_meta)
        meta['source_versions'] = {k: str(source_meta[k]) for k in _VERSIONS if k in source_meta}
    write_checkpoint(out, converted, meta)

    report = dict(family=family.FAMILY, arch=arch, source=source, deploy=deploy,
                  renamed=len(conversion.state_dict), kept=len(others), dropped=dropped,
                  notes=notes, dataset_meta=meta.get('dataset_meta', {}))
    log = lambda msg: print_log(msg, logger=logger or 'current')  # noqa: E731
    log(f'{src} -> {out}: {report["renamed"]} backbone tensors renamed ({arch}, {source} layout), '
        f'{report["kept"]} neck / head tensors kept; loads strictly into the model of {config}')
    for note in notes:
        log(f'  {note}')
    if dropped:
        log(f'  dropped {len(dropped)} keys the model does not use: {", ".join(dropped)}')
    return report

