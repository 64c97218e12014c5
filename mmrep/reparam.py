"""The one public entry point that fuses a whole model. Pure torch."""
from __future__ import annotations

import copy
import warnings
from typing import Dict, Iterator, Tuple

import torch
from torch import nn

from mmrep.blocks.base import ReparamModule

_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside (MM)DataParallel / DistributedDataParallel wrappers."""
    while isinstance(model, _WRAPPERS):
        model = model.module
    return model


def _fuse_children_first(module: nn.Module) -> int:
    # Children first: a block may read its fused children as single convs.
    fused = sum(_fuse_children_first(child) for child in list(module.children()))
    if isinstance(module, ReparamModule) and not module.deploy:
        module.reparameterize()
        fused += 1
    return fused


def _float_tensors(module: nn.Module) -> Iterator[Tuple[nn.Module, str, dict, torch.Tensor]]:
    """(owner, name, its dict, tensor) of every floating-point parameter and buffer."""
    for owner_name, owner in module.named_modules():
        for store in (owner._parameters, owner._buffers):
            for name, tensor in store.items():
                if tensor is not None and tensor.is_floating_point():
                    yield owner, f'{owner_name}.{name}', store, tensor


def _fuse_block(block: ReparamModule) -> int:
    """Fuse ``block`` and its sub-blocks in float32 (or float64) and cast back.

    Low-precision fusion loses accuracy (bf16 fused in bf16 is about twice as
    far from the float32 result as bf16 fused in float32 and then cast), and a
    bf16 conv whose BN was kept in float32 would otherwise become a float32
    conv. Tensors that survive fusion keep their dtype; new ones (fused
    kernels and biases) take the dtype of the block's convs.
    """
    dtypes: Dict[str, torch.dtype] = {name: t.dtype for _, name, _, t in _float_tensors(block)}
    work = torch.float64 if torch.float64 in dtypes.values() else torch.float32
    if all(d == work for d in dtypes.values()):
        return _fuse_children_first(block)
    convs = [m.weight.dtype for m in block.modules() if isinstance(m, nn.Conv2d)]
    target = convs[0] if convs else min(dtypes.values(), key=lambda d: torch.finfo(d).bits)
    block.to(work)
    fused = _fuse_children_first(block)
    for _, name, store, tensor in _float_tensors(block):
        dtype = dtypes.get(name, target)
        if tensor.dtype == dtype:
            continue
        key = name.rsplit('.', 1)[-1]
        if isinstance(tensor, nn.Parameter):
            tensor.data = tensor.data.to(dtype)
        else:
            store[key] = tensor.to(dtype)
    return fused


def _fuse_tree(module: nn.Module) -> int:
    if isinstance(module, ReparamModule):
        return _fuse_block(module) if count_unfused(module) else 0
    return sum(_fuse_tree(child) for child in list(module.children()))


def _in_training_mode(model: nn.Module) -> bool:
    return any(m.training for m in model.modules()
               if isinstance(m, ReparamModule) and not m.deploy)


TRAINING_MODE_WARNING = (
    'reparameterize_model: the model is in training mode. The fused model equals the '
    'unfused one only in eval mode: fusion folds the BatchNorm running statistics, while '
    'a training-mode BatchNorm normalizes with the statistics of each batch. Call '
    'model.eval() before comparing outputs.')


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse every re-parameterizable block of ``model`` into its plain form.

    Works on a bare backbone, an mmdet detector, an mmseg segmentor or any
    ``nn.Module`` that contains mmrep blocks. The result's eval-mode outputs
    equal the input's eval-mode outputs. Idempotent: fused blocks are left as
    they are, so a second call changes nothing. Fusion is computed in float32
    (float64 for float64 models) and cast back to the convs' dtype.

    A model in training mode gets a warning: the outputs are equal only in
    eval mode.

    Args:
        model: the model, possibly wrapped in DataParallel/DDP.
        inplace: fuse ``model`` itself and return it (its train/eval mode is
            kept). Otherwise a deep copy is fused and returned **in eval
            mode** and ``model`` is untouched; for a wrapped model the copy is
            of the inner module, since process-group wrappers cannot be copied.
    """
    inner = unwrap_model(model)
    if _in_training_mode(inner):
        warnings.warn(TRAINING_MODE_WARNING + ('' if inplace else
                      ' The fused copy is returned in eval mode.'), stacklevel=2)
    if inplace:
        _fuse_tree(inner)
        return model
    fused = copy.deepcopy(inner).eval()
    _fuse_tree(fused)
    return fused


def fused_eval_copy(model: nn.Module) -> nn.Module:
    """A fused copy of ``model`` in eval mode, whatever mode ``model`` is in (no warning)."""
    fused = copy.deepcopy(unwrap_model(model)).eval()
    _fuse_tree(fused)
    return fused


def count_unfused(model: nn.Module) -> int:
    """How many mmrep blocks in ``model`` are still in their training form."""
    return sum(isinstance(m, ReparamModule) and not m.deploy
               for m in unwrap_model(model).modules())
