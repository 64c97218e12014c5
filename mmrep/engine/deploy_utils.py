"""Fusing trained OpenMMLab models: checked loading, fused configs and checkpoints.

Shared by :class:`RepDeployHook` and ``tools/reparameterize.py``.
"""
from __future__ import annotations

import copy
import glob
import inspect
import os
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.runner.checkpoint import _load_checkpoint
from torch import nn

from mmrep.checkpoint import load_checkpoint_file
from mmrep.models.pretrained import compare_state_dict
from mmrep.models.unwrap import CheckpointLayoutError, unwrap_state_dict
from mmrep.reparam import count_unfused, fused_eval_copy, unwrap_model
from mmrep.version import __version__

# the registered mmrep types that take ``deploy=True`` to build the fused network directly
DEPLOYABLE_TYPES = ('RepVGG', 'RepGhostNet', 'OREPAResNet', 'RepLKNet', 'MobileOne', 'RepViT',
                    'RepPAFPN')


class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not belong to the model built from the config."""


def fused_checkpoint_error(model: nn.Module, checkpoint: dict,
                           name: str) -> Optional[CheckpointMismatchError]:
    """The error for a fused checkpoint loaded into a model still in its training form, else None.

    Fused means the checkpoint's meta says so (``fused=True``, written by
    :func:`save_fused`) or its keys are exactly those of ``model`` fused, and
    its keys are not the model's. A checkpoint of another head or model
    (fine-tuning with ``load_from``) is no concern of this check.
    """
    model = unwrap_model(model)
    try:
        state = unwrap_state_dict(checkpoint, 'saved').state
    except CheckpointLayoutError:
        return None  # not a checkpoint of weights: whoever loads it says so
    expected = set(model.state_dict())
    if set(state) == expected or count_unfused(model) == 0:
        return None
    meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) else {}
    if not meta.get('fused') and set(state) != set(fused_eval_copy(model).state_dict()):
        return None
    source = meta.get('source_checkpoint')
    # save_fused writes <config>_fused.py beside the checkpoint
    beside = sorted(glob.glob(osp.join(osp.dirname(name), '*_fused.py'))) \
        if osp.isfile(name) else []
    fused_cfg = (' (' + ', '.join(beside) + ')') if beside else ''
    return CheckpointMismatchError(
        f'{name} is already fused (re-parameterized), but the config builds the training '
        f'form of the model ({count_unfused(model)} unfused mmrep blocks): its weights do not '
        'fit, and fusing what loaded would test a half-random network. Use the fused config '
        f'written next to the fused checkpoint{fused_cfg}, which builds the plain network '
        "(deploy=True; its text is also in the checkpoint's meta['cfg'])"
        + (f', or the unfused checkpoint it was made from, {source}' if source else '') + '.')


def load_checked(model: nn.Module, checkpoint: str) -> dict:
    """Load ``checkpoint`` into ``model`` strictly, or explain why it does not fit.

    Tells apart a checkpoint that is already fused (load it with the fused
    config instead) from one of another model. Returns the checkpoint dict.
    """
    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    try:
        state = unwrap_state_dict(ckpt, 'saved').state
    except CheckpointLayoutError as err:
        raise CheckpointMismatchError(f'{checkpoint}: {err}') from None
    model = unwrap_model(model)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    mismatch = compare_state_dict(expected, state, optional_suffixes=())  # strict: every key
    if mismatch.missing or mismatch.unexpected:
        fused_error = fused_checkpoint_error(model, ckpt, checkpoint)
        if fused_error is not None:
            raise fused_error
    if mismatch:
        raise CheckpointMismatchError(
            f'{checkpoint} does not match the model built from the config '
            f'({type(model).__name__}): {mismatch.describe()}. '
            'Is it from another model, arch or number of classes?')
    model.load_state_dict(state, strict=True)
    return ckpt


def resolve_type(config_type, registries):
    """The class a config ``type`` names (``'Name'``, ``'mmdet.Name'`` or a class), or None."""
    if isinstance(config_type, type):
        return config_type
    if not isinstance(config_type, str):
        return None
    for registry in registries:
        cls = registry.get(config_type)
        if cls is not None:
            return cls
    return None


def resolve_model_type(model_type):
    """The model class a config ``type`` names, or None.

    Looked up in the model registries of the installed codebases (mmdet, mmseg), where mmrep
    registers its models.
    """
    from mmrep.registry import codebase_registries
    return resolve_type(model_type, [registry for _, registry in codebase_registries('MODELS')])


def resolve_hook_type(hook_type):
    """The hook class a config ``type`` names, or None (mmengine's, mmdet's, mmseg's registries)."""
    from mmengine.registry import HOOKS as MMENGINE_HOOKS
    from mmrep.registry import codebase_registries
    return resolve_type(hook_type, [MMENGINE_HOOKS]
                        + [registry for _, registry in codebase_registries('HOOKS')])


def is_deployable(model_type) -> bool:
    """Does this config ``type`` build an mmrep model that takes ``deploy=True``?"""
    cls = resolve_model_type(model_type)
    return (cls is not None and cls.__module__.startswith('mmrep.')
            and hasattr(cls, 'reparameterize')
            and 'deploy' in inspect.signature(cls.__init__).parameters)


def registered_name(cls: type):
    """``'mmdet.Name'`` / ``'mmseg.Name'`` for a class registered under its name, else the class."""
    from mmrep.registry import codebase_registries
    for scope, registry in codebase_registries('MODELS'):
        if registry.get(cls.__name__) is cls:
            return f'{scope}.{cls.__name__}'
    return cls


def _set_deploy(node) -> int:
    count = 0
    if isinstance(node, dict):
        if isinstance(node.get('type'), type):
            # a class object (pure-Python configs) cannot be written to a config file
            node['type'] = registered_name(node['type'])
        if 'type' in node and is_deployable(node['type']):
            node['deploy'] = True
            node['init_cfg'] = None  # the fused weights come from the checkpoint
            count += 1
        for value in node.values():
            count += _set_deploy(value)
    elif isinstance(node, (list, tuple)):
        count += sum(_set_deploy(v) for v in node)
    return count


def fused_config(cfg: Config, checkpoint: Optional[str] = None) -> Config:
    """A copy of ``cfg`` that builds the plain network (``deploy=True``) and loads ``checkpoint``."""
    cfg = copy.deepcopy(cfg)
    if cfg.get('model') is None:
        raise ValueError('the config has no model to fuse (a Runner built from a model '
                         'object has none): use mmrep.reparameterize_model on the model')
    if _set_deploy(cfg.model) == 0:
        raise ValueError('the config has no mmrep backbone or neck to fuse '
                         f'(looked for types {", ".join(DEPLOYABLE_TYPES)})')
    cfg.load_from = checkpoint
    cfg.resume = False
    return cfg


def read_meta(checkpoint: str) -> dict:
    """The ``meta`` dict of a checkpoint file (empty if it has none).

    A local file is memory-mapped: its tensors (the weights, the optimizer
    state) are never read into memory, only the pickle that describes them.
    """
    if os.path.isfile(checkpoint):
        ckpt = load_checkpoint_file(checkpoint, map_location='cpu', mmap=True)
    else:  # a URL or another mmengine scheme
        ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    return dict(ckpt.get('meta') or {}) if isinstance(ckpt, dict) else {}


def fused_meta(source_meta: Optional[dict], cfg: Config, source_checkpoint: Optional[str],
               extra: Optional[dict] = None) -> dict:
    """The source checkpoint's meta (dataset_meta, mmengine version, ...) plus the fused keys.

    ``cfg`` becomes the fused config's text (the source's is kept as ``source_cfg``).
    """
    meta = dict(source_meta or {})
    if 'cfg' in meta:
        meta['source_cfg'] = meta['cfg']
    meta.update(extra or {})
    meta.update(cfg=cfg.pretty_text, fused=True, mmrep_version=__version__,
                source_checkpoint=source_checkpoint)
    return meta


def save_fused(model: nn.Module, cfg: Config, ckpt_path: str, cfg_path: str,
               meta: Optional[dict] = None, overwrite: bool = False,
               source_checkpoint: Optional[str] = None,
               source_meta: Optional[dict] = None) -> nn.Module:
    """Fuse a copy of ``model``, write its checkpoint and a config that builds it; return the copy.

    Writes both files or neither. The checkpoint's ``meta`` keeps the source
    checkpoint's meta (``source_meta``, else read from ``source_checkpoint``)
    with ``fused``, ``mmrep_version``, ``source_checkpoint`` and ``meta`` added.
    """
    for path in (ckpt_path, cfg_path):
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f'{path} exists; refusing to overwrite it (pass overwrite/--force)')
    if source_checkpoint is None and meta:
        source_checkpoint = meta.get('source_checkpoint')
    if source_meta is None and source_checkpoint is not None:
        source_meta = read_meta(source_checkpoint)
    # everything that can fail runs before the first file is written
    new_cfg = fused_config(cfg, os.path.abspath(ckpt_path))
    fused = fused_eval_copy(model)
    state = {k: v.detach().cpu() for k, v in fused.state_dict().items()}
    checkpoint = {'meta': fused_meta(source_meta, new_cfg, source_checkpoint, meta),
                  'state_dict': state}
    tmp_ckpt, tmp_cfg = ckpt_path + '.tmp', cfg_path + '.tmp.py'
    try:
        torch.save(checkpoint, tmp_ckpt)
        new_cfg.dump(tmp_cfg)
        os.replace(tmp_ckpt, ckpt_path)
        os.replace(tmp_cfg, cfg_path)
    finally:
        for tmp in (tmp_ckpt, tmp_cfg):
            if os.path.exists(tmp):
                os.remove(tmp)
    return fused
