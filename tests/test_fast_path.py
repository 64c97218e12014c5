"""The fast path (mmrep.engine.fast_path): the layout changes, the results do not."""
import copy
import os.path as osp
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings, strategies as st
from mmengine.config import Config

import mmrep
from conftest import REPO_ROOT
from mmrep.engine.fast_path import (MEMORY_FORMATS, apply_memory_format, choose_memory_format,
                                    current_memory_format, rule_memory_format, to_fast_path)
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


# ------------------------------------------------------- ops that read NCHW memory (issue 16)

def _fused_detector(config: str, size: int):
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', config))
    cfg.model.backbone.init_cfg = None  # offline: the configs name ImageNet weights on the hub
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model = mmrep.reparameterize_model(_randomize_bn(model).eval())
    model.test_cfg.rcnn.score_thr = 0.0  # keep the detections of random weights
    return model


def _sample(size):
    from mmdet.structures import DetDataSample
    return DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                       pad_shape=(size, size), batch_input_shape=(size, size),
                                       scale_factor=(1.0, 1.0)))


def _assert_same_detections(got, want, size, k=20):
    """The top-k detections agree: labels, scores within 1e-4, boxes within 1e-3 of the
    image size, masks on all but 1e-3 of their pixels."""
    assert len(got) == len(want) >= k
    assert torch.equal(got.labels[:k], want.labels[:k])
    assert (got.scores[:k] - want.scores[:k]).abs().max() <= 1e-4
    box_diff = (got.bboxes[:k] - want.bboxes[:k]).abs().max()
    assert box_diff <= 1e-3 * size, f'boxes off by {box_diff:.3g} px'
    assert (got.masks[:k] != want.masks[:k]).float().mean() <= 1e-3


@pytest.mark.parametrize('config', ['mask-rcnn_repvgg-a0_reppafpn_1x.py',
                                    'mask-rcnn_orepa-r50_fpn_1x.py'])
def test_shipped_mask_rcnn_configs_keep_their_detections(config):
    """Item 14: mmcv's CPU RoIAlign reads NCHW memory; channels_last changed 14 of the top 20
    detections of the fused Mask R-CNN-RepVGG-A0. The fast path keeps them and still runs
    the backbone and neck channels_last.

    The RoI heads get the same proposals in both layouts: with random weights the RPN's
    choice among near-equal proposals flips under any rounding-sized change of its input
    (in NCHW too, for OREPA-R50); the whole A0 model is compared end to end as well.
    """
    size = 128
    model = _fused_detector(config, size)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))

    def detect(proposals=None):
        with torch.no_grad():
            if proposals is None:  # end to end
                return model(x, [_sample(size)], mode='predict')[0].pred_instances
            feats = model.extract_feat(x)
            return model.roi_head.predict(feats, copy.deepcopy(proposals), [_sample(size)])[0]

    with torch.no_grad():
        proposals = model.rpn_head.predict(model.extract_feat(x), [_sample(size)], rescale=False)
    want, want_end_to_end = detect(proposals), detect()
    assert to_fast_path(model) == 'channels_last'
    conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    _assert_same_detections(detect(proposals), want, size)
    if 'repvgg' in config:
        _assert_same_detections(detect(), want_end_to_end, size)


class DeformableNet(torch.nn.Module):
    """A conv, mmcv's DeformConv2d and ModulatedDeformConv2d (random offsets), a conv."""

    def __init__(self):
        from mmcv.ops import DeformConv2dPack, ModulatedDeformConv2dPack
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.dcn = DeformConv2dPack(8, 8, 3, padding=1)
        self.mdcn = ModulatedDeformConv2dPack(8, 8, 3, padding=1)
        self.head = torch.nn.Conv2d(8, 4, 1)
        for offset in (self.dcn.conv_offset, self.mdcn.conv_offset):
            torch.nn.init.normal_(offset.weight, std=0.3)  # the packs start at zero offsets

    def forward(self, x):
        return self.head(self.mdcn(self.dcn(self.stem(x))))


def test_deformable_convs_keep_their_outputs():
    """Item 14: ModulatedDeformConv2d gave wrong outputs in channels_last, DeformConv2d raised."""
    model = DeformableNet().eval()
    x = torch.rand(2, 3, 24, 20)
    with torch.no_grad():
        want = model(x)
    assert to_fast_path(model) == 'channels_last'
    assert model.stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.dcn.weight.is_contiguous() and model.mdcn.weight.is_contiguous()
    with torch.no_grad():
        _assert_close([model(x)], [want])
    to_fast_path(model, 'contiguous')  # undone: no hook left behind
    with torch.no_grad():
        _assert_close([model(x)], [want])


class ReadsNCHWMemory(torch.nn.Module):
    """Stands in for a compiled op outside mmcv that indexes its input as NCHW memory."""

    def forward(self, x):
        n, c, h, w = x.shape
        return torch.as_strided(x, x.shape, (c * h * w, h * w, w, 1)) * 2


def _faster_in_channels_last(model):
    def median_ms(run, repeats):
        run()
        return 1.0 if current_memory_format(model) == 'channels_last' else 2.0
    return median_ms


@pytest.mark.parametrize('nchw_op', [False, True])
def test_measured_mode_never_picks_a_layout_that_changes_outputs(nchw_op, monkeypatch):
    """Item 14: the measured mode compares the layouts' outputs, not only their speed."""
    from mmrep.engine import fast_path
    layers = [torch.nn.Conv2d(3, 8, 3), ReadsNCHWMemory()] if nchw_op else [DeformableNet()]
    model = torch.nn.Sequential(*layers).eval()
    x = torch.rand(1, 3, 16, 16)
    monkeypatch.setattr(fast_path, 'median_ms', _faster_in_channels_last(model))
    assert to_fast_path(model, run=lambda: model(x)) == (
        'contiguous' if nchw_op else 'channels_last')


def test_off_the_cpu_the_rule_keeps_the_users_layout():
    """Item 15: on another device the rule changes nothing, not even the user's channels_last."""
    for fmt in ('channels_last', 'contiguous'):
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3, groups=8))
        model = model.to('meta').to(memory_format=MEMORY_FORMATS[fmt])
        assert rule_memory_format(model) == fmt
        assert to_fast_path(model) == fmt
        weight = model[0].weight
        assert weight.is_contiguous(memory_format=MEMORY_FORMATS[fmt])
        assert weight.is_contiguous() == (fmt == 'contiguous')
