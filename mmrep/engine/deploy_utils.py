"""Fusing trained OpenMMLab models: checked loading, fused configs and checkpoints.

Shared by :class:`RepDeployHook` and ``tools/reparameterize.py``.
"""
from __future__ import annotations

import copy
import os
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.runner.checkpoint import _load_checkpoint
from torch import nn

from mmrep.reparam import reparameterize_model, unwrap_model

# config types that take ``deploy=True`` to build the fused network directly
DEPLOYABLE_TYPES = ('RepVGG', 'RepGhostNet', 'OREPAResNet', 'RepLKNet', 'RepPAFPN')


class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not belong to the model built from the config."""


def _strip_prefix(state: dict) -> dict:
    if state and all(k.startswith('module.') for k in state):
        return {k[len('module.'):]: v for k, v in state.items()}
    return state


def load_checked(model: nn.Module, checkpoint: str) -> dict:
    """Load ``checkpoint`` into ``model`` strictly, or explain why it does not fit.

    Tells apart a checkpoint that is already fused (load it with the fused
    config instead) from one of another model. Returns the checkpoint dict.
    """
    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    state = _strip_prefix(ckpt.get('state_dict', ckpt))
    model = unwrap_model(model)
    expected = set(model.state_dict())
    got = set(state)
    if expected != got:
        fused_keys = set(reparameterize_model(model).state_dict())
        if got == fused_keys and fused_keys != expected:
            raise CheckpointMismatchError(
                f'{checkpoint} is already fused (re-parameterized): it cannot be fused '
                'again. Build the model with the fused config (deploy=True) to use it.')
        missing, unexpected = sorted(expected - got), sorted(got - expected)
        raise CheckpointMismatchError(
            f'{checkpoint} does not match the model built from the config '
            f'({type(model).__name__}): {len(missing)} missing keys (e.g. {missing[:3]}), '
            f'{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). '
            'Is it from another model, arch or number of classes?')
    for key, value in model.state_dict().items():
        if value.shape != state[key].shape:
            raise CheckpointMismatchError(
                f'{checkpoint} does not match the model: {key} has shape '
                f'{tuple(state[key].shape)}, the model expects {tuple(value.shape)}')
    model.load_state_dict(state, strict=True)
    return ckpt


def _set_deploy(node) -> int:
    count = 0
    if isinstance(node, dict):
        if node.get('type') in DEPLOYABLE_TYPES:
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
    if _set_deploy(cfg.model) == 0:
        raise ValueError('the config has no mmrep backbone or neck to fuse '
                         f'(looked for types {", ".join(DEPLOYABLE_TYPES)})')
    cfg.load_from = checkpoint
    cfg.resume = False
    return cfg


def save_fused(model: nn.Module, cfg: Config, ckpt_path: str, cfg_path: str,
               meta: Optional[dict] = None, overwrite: bool = False) -> None:
    """Fuse a copy of ``model`` and write its checkpoint and a config that builds it."""
    for path in (ckpt_path, cfg_path):
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f'{path} exists; refusing to overwrite it (pass overwrite/--force)')
    fused = reparameterize_model(model)
    state = {k: v.detach().cpu() for k, v in fused.state_dict().items()}
    torch.save({'meta': dict(meta or {}, fused=True), 'state_dict': state}, ckpt_path)
    fused_config(cfg, os.path.abspath(ckpt_path)).dump(cfg_path)
