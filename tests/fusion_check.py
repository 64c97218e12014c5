"""Shared assertions for fusion tests: every block and backbone is checked the same way."""
from __future__ import annotations

import torch
from torch import nn

from mmrep import reparameterize_model
from mmrep.blocks.base import ReparamModule

REL_TOL = 1e-4


def image(*shape, seed: int = 0) -> torch.Tensor:
    """A reproducible standard-normal tensor of ``shape`` (an image batch, a kernel, ...)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model


def _flatten(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _flatten(o)]


def max_rel_diff(a, b) -> float:
    """max |a - b| over all outputs, divided by the output scale max(1e-6, max |a|)."""
    a, b = _flatten(a), _flatten(b)
    assert len(a) == len(b), f'{len(a)} outputs before fusion, {len(b)} after'
    worst = 0.0
    for x, y in zip(a, b):
        assert x.shape == y.shape, f'shape {tuple(x.shape)} became {tuple(y.shape)}'
        scale = max(x.abs().max().item(), 1e-6)
        worst = max(worst, (x - y).abs().max().item() / scale)
    return worst


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def assert_fusion_exact(model: nn.Module, *inputs: torch.Tensor, seed: int = 0,
                        tol: float = REL_TOL) -> nn.Module:
    """Fuse ``model`` (eval mode, random BN statistics) and check it computes the same.

    Also checks that fusion left no BatchNorm and no unfused block, and that a
    second fusion changes nothing. Returns the fused model.
    """
    randomize_bn(model, seed).eval()
    with torch.no_grad():
        expected = model(*inputs)
        fused = reparameterize_model(model)
        got = fused(*inputs)
    diff = max_rel_diff(expected, got)
    assert diff <= tol, f'fused output differs by {diff:.3g} of the output scale (> {tol})'
    assert count_bn(fused) == 0, f'{count_bn(fused)} BatchNorm layers left after fusion'
    assert not any(isinstance(m, ReparamModule) and not m.deploy for m in fused.modules())
    state = {k: v.clone() for k, v in fused.state_dict().items()}
    again = reparameterize_model(fused, inplace=True)
    assert again is fused
    assert state.keys() == fused.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in fused.state_dict().items())
    return fused
