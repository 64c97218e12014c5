"""Each formula in mmrep.fusion against the layers it replaces, on varying shapes."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from fusion_check import randomize_bn
from mmrep import fusion

SETTINGS = settings(max_examples=15, deadline=None)
groups_st = st.sampled_from([1, 2, 4])


def close(a, b):
    return (a - b).abs().max().item() <= 1e-4 * max(1.0, a.abs().max().item())


@SETTINGS
@given(groups=groups_st, k=st.sampled_from([1, 3, 5]), stride=st.sampled_from([1, 2]),
       h=st.integers(5, 14), w=st.integers(5, 14), bias=st.booleans(),
       eps=st.sampled_from([1e-5, 1e-3, 0.1]), seed=st.integers(0, 99))
def test_fold_bn(groups, k, stride, h, w, bias, eps, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(4, 8, k, stride, k // 2, groups=groups, bias=bias)
    bn = randomize_bn(nn.BatchNorm2d(8, eps=eps), seed).eval()
    x = torch.randn(2, 4, h, w)
    kernel, b = fusion.fold_bn(conv.weight, conv.bias, bn)
    got = F.conv2d(x, kernel, b, stride, k // 2, groups=groups)
    assert close(bn(conv(x)), got)


def test_fold_bn_syncbn_and_no_affine():
    conv = nn.Conv2d(3, 6, 3, padding=1)
    x = torch.randn(1, 3, 7, 9)
    for bn in (nn.SyncBatchNorm(6), nn.BatchNorm2d(6, affine=False)):
        randomize_bn(bn).eval()
        kernel, b = fusion.fold_bn(conv.weight, conv.bias, bn)
        assert close(bn(conv(x)), F.conv2d(x, kernel, b, padding=1))


def test_fold_bn_rejects_batch_statistics_only():
    with pytest.raises(ValueError, match='track_running_stats'):
        fusion.fold_bn(torch.zeros(2, 2, 1, 1), None, nn.BatchNorm2d(2, track_running_stats=False))


@SETTINGS
@given(groups=groups_st, k=st.sampled_from([1, 3, 5]), h=st.integers(3, 12), w=st.integers(3, 12))
def test_identity_kernel_is_identity(groups, k, h, w):
    x = torch.randn(1, 8, h, w)
    kernel = fusion.identity_kernel(8, groups, k)
    assert kernel.sum() == 8
    assert torch.equal(F.conv2d(x, kernel, padding=k // 2, groups=groups), x)


@SETTINGS
@given(small=st.sampled_from([1, 3]), large=st.sampled_from([3, 5, 7]), h=st.integers(4, 12),
       w=st.integers(4, 12), stride=st.sampled_from([1, 2]))
def test_pad_and_sum_branches(small, large, h, w, stride):
    if small > large:
        small, large = large, small
    a = nn.Conv2d(4, 6, large, stride, large // 2)
    b = nn.Conv2d(4, 6, small, stride, small // 2)
    x = torch.randn(1, 4, h, w)
    kernel, bias = fusion.sum_branches([(a.weight, a.bias), (b.weight, b.bias)])
    assert kernel.shape[-1] == large
    assert close(a(x) + b(x), F.conv2d(x, kernel, bias, stride, large // 2))


def test_pad_kernel_rejects_shrinking_and_off_centre():
    with pytest.raises(ValueError, match='smaller'):
        fusion.pad_kernel(torch.zeros(1, 1, 5, 5), 3)
    with pytest.raises(ValueError, match='centre'):
        fusion.pad_kernel(torch.zeros(1, 1, 3, 3), 4)


@SETTINGS
@given(groups=groups_st, k=st.sampled_from([1, 3, 5]), h=st.integers(6, 12), w=st.integers(6, 12),
       seed=st.integers(0, 99))
def test_compose_1x1_kxk_interior(groups, k, h, w, seed):
    torch.manual_seed(seed)
    first = nn.Conv2d(8, 8, 1, groups=groups)
    second = nn.Conv2d(8, 4, k, groups=groups, padding=0)  # no padding: exact everywhere
    x = torch.randn(1, 8, h, w)
    kernel, bias = fusion.compose_1x1_kxk((first.weight, first.bias), (second.weight, second.bias),
                                          groups)
    assert close(second(first(x)), F.conv2d(x, kernel, bias, groups=groups))


@SETTINGS
@given(groups=st.sampled_from([1, 2, 4]), k=st.sampled_from([3, 5]), h=st.integers(4, 10),
       w=st.integers(4, 10))
def test_compose_kxk_1x1(groups, k, h, w):
    first = nn.Conv2d(4, 8, k, padding=k // 2, groups=groups)
    second = nn.Conv2d(8, 5, 1)
    x = torch.randn(1, 4, h, w)
    kernel, bias = fusion.compose_kxk_1x1((first.weight, first.bias), (second.weight, second.bias),
                                          groups)
    assert close(second(first(x)), F.conv2d(x, kernel, bias, padding=k // 2))


@SETTINGS
@given(k=st.sampled_from([3, 5]), stride=st.sampled_from([1, 2]), groups=groups_st,
       h=st.integers(4, 11), w=st.integers(4, 11))
def test_avg_pool_kernel(k, stride, groups, h, w):
    x = torch.randn(1, 8, h, w)
    pool = nn.AvgPool2d(k, stride, k // 2, count_include_pad=True)
    kernel = fusion.avg_pool_kernel(8, k, groups)
    assert close(pool(x), F.conv2d(x, kernel, None, stride, k // 2, groups=groups))


def test_spread_1x1_is_1x1_then_avg_pool():
    conv = nn.Conv2d(3, 4, 1, bias=False)
    x = torch.randn(1, 3, 9, 7)
    kernel = fusion.spread_1x1(conv.weight, torch.full((3, 3), 1 / 9))
    pool = nn.AvgPool2d(3, 1, 1, count_include_pad=True)
    assert close(pool(conv(x)), F.conv2d(x, kernel, None, padding=1))


@SETTINGS
@given(h=st.integers(3, 10), w=st.integers(3, 10), bias=st.booleans(), seed=st.integers(0, 99))
def test_fold_preceding_bn(h, w, bias, seed):
    torch.manual_seed(seed)
    bn = randomize_bn(nn.BatchNorm2d(6), seed).eval()
    conv = nn.Conv2d(6, 4, 1, bias=bias)
    x = torch.randn(2, 6, h, w)
    kernel, b = fusion.fold_preceding_bn(bn, conv.weight, conv.bias)
    assert close(conv(bn(x)), F.conv2d(x, kernel, b))


def test_fold_preceding_bn_refuses_kxk():
    with pytest.raises(ValueError, match='1x1'):
        fusion.fold_preceding_bn(nn.BatchNorm2d(2).eval(), torch.zeros(2, 2, 3, 3), None)


def test_fusion_layer_imports_no_openmmlab():
    import ast
    import inspect
    import glob
    import os.path as osp
    package = osp.dirname(inspect.getfile(fusion))
    files = [inspect.getfile(fusion), osp.join(package, 'reparam.py')]
    files += glob.glob(osp.join(package, 'blocks', '*.py'))
    assert len(files) > 5
    for path in files:
        tree = ast.parse(open(path).read())
        names = {a.name.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names}
        names |= {n.module.split('.')[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {'mmengine', 'mmcv', 'mmdet', 'mmseg'}, path
