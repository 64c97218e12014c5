"""The one public entry point that fuses a whole model. Pure torch."""
from __future__ import annotations

import copy

from torch import nn

from mmrep.blocks.base import ReparamModule

_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside (MM)DataParallel / DistributedDataParallel wrappers."""
    while isinstance(model, _WRAPPERS):
        model = model.module
    return model


def _fuse_tree(module: nn.Module) -> int:
    # Children first: a block may read its fused children as single convs.
    fused = sum(_fuse_tree(child) for child in list(module.children()))
    if isinstance(module, ReparamModule) and not module.deploy:
        module.reparameterize()
        fused += 1
    return fused


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse every re-parameterizable block of ``model`` into its plain form.

    Works on a bare backbone, an mmdet detector, an mmseg segmentor or any
    ``nn.Module`` that contains mmrep blocks. The result's eval-mode outputs
    equal the input's eval-mode outputs. Idempotent: fused blocks are left as
    they are, so a second call changes nothing.

    Args:
        model: the model, possibly wrapped in DataParallel/DDP.
        inplace: fuse ``model`` itself and return it. Otherwise a deep copy is
            fused and returned and ``model`` is untouched; for a wrapped
            model the copy is of the inner module, since process-group
            wrappers cannot be copied.
    """
    if inplace:
        _fuse_tree(unwrap_model(model))
        return model
    fused = copy.deepcopy(unwrap_model(model))
    _fuse_tree(fused)
    return fused


def count_unfused(model: nn.Module) -> int:
    """How many mmrep blocks in ``model`` are still in their training form."""
    return sum(isinstance(m, ReparamModule) and not m.deploy
               for m in unwrap_model(model).modules())
