"""Pieces of tools/benchmark.py that must be right for its figures to mean anything (no timing)."""
import importlib.util
import os.path as osp

import torch
from hypothesis import given, settings, strategies as st

import mmrep
from conftest import REPO_ROOT
from mmrep.models.backbones.repvgg import RepVGG

_spec = importlib.util.spec_from_file_location('mmrep_benchmark_tool',
                                               osp.join(REPO_ROOT, 'tools', 'benchmark.py'))
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 20), w=st.integers(1, 20), out_h=st.integers(1, 7),
       out_w=st.integers(1, 7))
def test_exportable_adaptive_pool_equals_torch(h, w, out_h, out_w):
    x = torch.rand(2, 3, h, w)
    want = torch.nn.AdaptiveAvgPool2d((out_h, out_w))(x)
    got = benchmark._AdaptiveAvgPoolAsMatMul((out_h, out_w))(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-6)


def test_plain_limit_runs_the_fused_models_convs_and_nothing_else():
    fused = mmrep.reparameterize_model(RepVGG(arch='A0', out_indices=(3,))).eval()
    model = benchmark._Flatten(fused, lambda m, x: m(x))
    inputs = (torch.rand(1, 3, 32, 32),)
    limit = benchmark.PlainLimit(model, inputs)
    convs = [m for m in fused.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(limit.convs) == len(convs) == 22  # A0: 1 + 2 + 4 + 14 + 1 blocks
    assert [c.weight.shape for c in limit.convs] == [c.weight.shape for c in convs]
    assert limit.feeds == {}  # RepVGG fused is one chain of convs: nothing to substitute
    with torch.no_grad():
        out = limit()
        want = model(*inputs)[0]
    assert out.shape == want.shape
    assert torch.allclose(out, want, atol=1e-5)  # same convs + ReLU: the same network


def test_targets_say_met_or_not_with_the_figures():
    def row(model, path, ms):
        return dict(model=model, path=path, batch=1, median_ms=ms, input=[1, 3, 224, 224])
    rows = [row('RepVGG-A0', 'fused', 10.2), row('RepVGG-A0', 'plain_limit', 10.0),
            row('RepVGG-A0', 'fused_channels_last', 9.0),
            row('RepVGG-A0', 'plain_limit_channels_last', 8.0),
            row('RepVGG-A0 (timm)', 'fused', 12.0),
            row('RepLKNet-31B', 'fused', 800.0), row('RepLKNet-31B', 'onnxruntime', 100.0)]
    lines = benchmark.check_targets(rows)
    assert any('`fused` 10.2 ms' in line and '+2.0%' in line and '**met**' in line
               for line in lines)
    assert any('`fused_channels_last`' in line and '+12.5%' in line and '**not met**' in line
               for line in lines)
    assert any('timm' in line and '1.33x' in line and '**not met**' in line for line in lines)
    assert any('RepLKNet-31B' in line and '8.00x' in line and '**met**' in line
               for line in lines)
