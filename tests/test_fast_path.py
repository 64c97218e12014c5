"""The fast path (mmrep.engine.fast_path): the layout changes, the results do not."""
import os.path as osp
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings, strategies as st
from mmengine.config import Config

import mmrep
from conftest import REPO_ROOT
from mmrep.engine.fast_path import (apply_memory_format, choose_memory_format,
                                    rule_memory_format, to_fast_path)
from mmrep.engine.measure import PeakRSS
from mmrep.engine.rep_deploy_hook import RepDeployHook
from mmrep.models.backbones.repghostnet import RepGhostNet
from mmrep.models.backbones.repvgg import RepVGG


def _randomize_bn(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


def _assert_close(got, want):
    for g, w in zip(got, want):
        scale = w.abs().max().clamp_min(1e-6)
        assert (g - w).abs().max() <= 1e-4 * scale


_fused_ghost = mmrep.reparameterize_model(_randomize_bn(RepGhostNet(widen_factor=0.5)).eval())


@settings(max_examples=4, deadline=None)
@given(h=st.integers(33, 80), w=st.integers(33, 80), batch=st.integers(1, 2))
def test_channels_last_keeps_depthwise_outputs(h, w, batch):
    """RepGhostNet's depthwise convs: channels_last (the rule's choice) changes no output."""
    model = _fused_ghost
    x = torch.rand(batch, 3, h, w)
    apply_memory_format(model, 'contiguous')
    with torch.no_grad():
        want = model(x)
    assert to_fast_path(model) == 'channels_last'
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    with torch.no_grad():
        got = model(x)
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    _assert_close(got, want)


def test_contiguous_undoes_channels_last_and_rejects_unknown_format():
    model = mmrep.reparameterize_model(RepVGG(arch='A0', out_indices=(3,))).eval()
    to_fast_path(model, 'channels_last')
    assert to_fast_path(model, 'contiguous') == 'contiguous'
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))[0]
    assert out.is_contiguous()
    assert all(p.is_contiguous() for p in model.parameters())
    with pytest.raises(ValueError, match='channels_last'):
        to_fast_path(model, 'nhwc')


def test_rule_leaves_models_without_convs_alone():
    assert rule_memory_format(torch.nn.Linear(3, 3)) == 'contiguous'
    assert rule_memory_format(torch.nn.Conv2d(3, 3, 3)) == 'channels_last'


def test_measured_choice_is_a_layout_the_model_runs_in():
    model = mmrep.reparameterize_model(RepVGG(arch='A0', out_indices=(3,))).eval()
    x = torch.rand(1, 3, 64, 64)
    choice = choose_memory_format(model, run=lambda: model(x), repeats=1)
    assert choice in ('channels_last', 'contiguous')
    assert all(p.is_contiguous() for p in model.parameters())  # measuring leaves it NCHW


def _speed_detector():
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs',
                                   'retinanet_repvgg-a0_reppafpn-slim_shapes.py'))
    init_default_scope('mmdet')
    return _randomize_bn(MODELS.build(cfg.model)).eval()


def test_detector_outputs_and_hook_use_the_fast_path():
    """RepDeployHook fuses and picks the layout; raw head outputs and boxes are unchanged."""
    from mmdet.structures import DetDataSample
    detector = _speed_detector()
    detector.bbox_head.test_cfg.score_thr = 0.0  # keep boxes of the untrained head
    x = torch.rand(1, 3, 96, 96)
    sample = DetDataSample(metainfo=dict(img_shape=(96, 96), ori_shape=(96, 96),
                                         scale_factor=(1.0, 1.0)))
    with torch.no_grad():
        want = detector(x, mode='tensor')
        want_boxes = detector(x, [sample], mode='predict')[0].pred_instances
    runner = SimpleNamespace(model=detector, hooks=[],
                             logger=SimpleNamespace(info=lambda msg: None))
    RepDeployHook().before_test(runner)
    assert mmrep.count_unfused(detector) == 0
    conv = next(m for m in detector.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = detector(x, mode='tensor')
        got_boxes = detector(x, [sample], mode='predict')[0].pred_instances
    for g, w in zip(got, want):
        _assert_close(g, w)
    assert len(got_boxes) == len(want_boxes) > 0
    assert torch.allclose(got_boxes.scores.sort().values, want_boxes.scores.sort().values,
                          atol=1e-4)


def test_hook_memory_format_contiguous_keeps_nchw():
    detector = _speed_detector()
    runner = SimpleNamespace(model=detector, hooks=[],
                             logger=SimpleNamespace(info=lambda msg: None))
    RepDeployHook(memory_format='contiguous').before_test(runner)
    assert all(p.is_contiguous() for p in detector.parameters())


def test_peak_rss_sees_torch_allocations():
    with PeakRSS() as peak:
        block = torch.ones(64, 1024, 1024)  # 256 MB, written so the pages are resident
        del block
    if peak.mb is None:
        pytest.skip('no /proc/self/clear_refs here: peak RSS cannot be reset')
    assert 200 < peak.mb < 1024
