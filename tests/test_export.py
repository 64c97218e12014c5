"""Fused models through mmdeploy to ONNX, run in onnxruntime and checked against PyTorch."""
import os
import os.path as osp
import sys

import pytest
import torch

pytest.importorskip('mmdeploy')
pytest.importorskip('onnxruntime')

from conftest import REPO_ROOT, shared_data  # noqa: E402
from fusion_check import randomize_bn  # noqa: E402

sys.path.insert(0, osp.join(REPO_ROOT, 'tools'))
import deploy as deploy_tool  # noqa: E402

from mmengine.config import Config  # noqa: E402
from mmengine.registry import MODELS, init_default_scope  # noqa: E402

import mmrep  # noqa: E402,F401
from mmrep.deploy import ExportCheckError  # noqa: E402

DEPLOY_DIR = osp.join(REPO_ROOT, 'configs', 'deploy')


def _small_detector_cfg(neck=None) -> Config:
    """RetinaNet-RepGhost, 3 classes, 320x320 test input, every box kept."""
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', 'retinanet_repghost_1x.py'))
    cfg.model.backbone.init_cfg = None  # offline: the config names ImageNet weights on the hub
    cfg.model.bbox_head.num_classes = 3
    cfg.model.test_cfg.score_thr = 0.0
    if neck is not None:
        cfg.model.neck = neck
    for step in cfg.test_dataloader.dataset.pipeline:
        if step['type'] == 'Resize':
            step.update(scale=(320, 320), keep_ratio=False)
    cfg.test_pipeline = cfg.test_dataloader.dataset.pipeline
    return cfg


def _random_checkpoint(cfg: Config, path: str) -> str:
    """An unfused training checkpoint with random weights and BN statistics."""
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    randomize_bn(model)
    torch.save({'state_dict': model.state_dict()}, path)
    return path


def _coco_image() -> str:
    return osp.join(shared_data('coco128'), 'train2017', '000000000009.jpg')


def _run(tmp_path, deploy_cfg, cfg, *extra) -> dict:
    cfg_path = str(tmp_path / 'model_cfg.py')
    cfg.dump(cfg_path)
    ckpt = _random_checkpoint(cfg, str(tmp_path / 'unfused.pth'))
    return deploy_tool.main([osp.join(DEPLOY_DIR, deploy_cfg), cfg_path, ckpt, _coco_image(),
                             '--work-dir', str(tmp_path / 'work'), '--device', 'cpu', *extra])


def _assert_exported_plain_and_agreeing(report):
    graph, agree = report['graph'], report['agreement']
    assert report['ok'], report['errors']
    assert graph['bn_nodes'] == 0
    assert graph['conv_weights'] == graph['torch_conv2d'] > 0
    assert graph['parallel_conv_adds'] == []
    assert agree['compared'] > 0 and agree['unmatched'] == 0
    assert agree['max_box_abs_diff'] < 1.0 and agree['max_score_abs_diff'] < 1e-3
    assert osp.isfile(osp.join(osp.dirname(report['onnx']), 'report.json'))


def test_retinanet_repghost_static_export(tmp_path):
    report = _run(tmp_path, 'detection_onnxruntime_static.py', _small_detector_cfg())
    _assert_exported_plain_and_agreeing(report)
    assert report['input_shape'][-2:] == [320, 320]


def test_retinanet_rep_pafpn_dynamic_export(tmp_path):
    """The neck is fused too (mmdeploy alone would only fuse the backbone)."""
    import onnx
    neck = dict(type='RepPAFPN', in_channels=[24, 40, 112, 160], out_channels=256,
                start_level=1, add_extra_convs='on_input', num_outs=5)
    report = _run(tmp_path, 'detection_onnxruntime_dynamic.py', _small_detector_cfg(neck))
    _assert_exported_plain_and_agreeing(report)
    dims = onnx.load(report['onnx']).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ['batch', '', 'height', 'width']


def _segmentor_cfg() -> Config:
    """RepVGG-A0 + a small FCN head for the 11 CamVid classes, 320x240 input."""
    norm = dict(type='BN', requires_grad=True)
    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='Resize', scale=(320, 240), keep_ratio=False),
                dict(type='PackSegInputs')]
    return Config(dict(
        default_scope='mmseg',
        custom_imports=dict(imports=['mmrep'], allow_failed_imports=False),
        model=dict(
            type='EncoderDecoder',
            data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                                   std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                                   seg_pad_val=255),
            backbone=dict(type='RepVGG', arch='A0', out_indices=(2, 3), norm_cfg=norm),
            decode_head=dict(type='FCNHead', in_channels=1280, in_index=1, channels=64,
                             num_convs=1, concat_input=False, num_classes=11, norm_cfg=norm,
                             loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
            train_cfg=dict(), test_cfg=dict(mode='whole')),
        test_pipeline=pipeline,
        test_dataloader=dict(batch_size=1, dataset=dict(type='CamVidDataset', pipeline=pipeline))))


def test_repvgg_fcn_segmentation_export(tmp_path):
    image = sorted(os.listdir(osp.join(shared_data('camvid'), 'test')))[0]
    cfg = _segmentor_cfg()
    cfg_path = str(tmp_path / 'seg_cfg.py')
    cfg.dump(cfg_path)
    ckpt = _random_checkpoint(cfg, str(tmp_path / 'unfused.pth'))
    report = deploy_tool.main([osp.join(DEPLOY_DIR, 'segmentation_onnxruntime_static.py'),
                               cfg_path, ckpt, osp.join(shared_data('camvid'), 'test', image),
                               '--work-dir', str(tmp_path / 'work')])
    assert report['ok'], report['errors']
    assert report['graph']['bn_nodes'] == 0
    assert report['graph']['conv_weights'] == report['graph']['torch_conv2d'] > 0
    assert report['agreement']['pixels'] == 480 * 360
    assert report['agreement']['pixel_agreement'] >= 0.99


class _TwoBranches(torch.nn.Module):
    """An unfused RepVGG-like block: 3x3 and 1x1 convs on one input, summed, then BN."""

    def __init__(self):
        super().__init__()
        self.k3 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.k1 = torch.nn.Conv2d(4, 4, 1)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.k3(x) + self.k1(x)))


def test_graph_checks_catch_unfused_branches(tmp_path):
    from mmrep.deploy import check_onnx_graph
    model = _TwoBranches().train()  # training mode keeps BatchNormalization in the graph
    path = str(tmp_path / 'branches.onnx')
    torch.onnx.export(model, (torch.rand(1, 4, 8, 8),), path, opset_version=11,
                      training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    report = check_onnx_graph(path, model)
    assert not report['ok']
    assert report['bn_nodes'] == 1
    assert len(report['parallel_conv_adds']) == 1
    assert report['conv_weights'] == report['torch_conv2d'] == 2


def test_failed_check_raises(tmp_path, monkeypatch):
    """tools/deploy.py fails loudly when PyTorch and onnxruntime disagree."""
    import mmrep.deploy.pipeline as pipeline
    monkeypatch.setattr(pipeline, 'TOLERANCES', dict(pipeline.TOLERANCES, score_abs=-1.0))
    with pytest.raises(ExportCheckError, match='score diff'):
        _run(tmp_path, 'detection_onnxruntime_static.py', _small_detector_cfg())


def _mask_rcnn_cfg(tmp_path) -> Config:
    """Mask R-CNN with a RepVGG-A0 backbone, 3 classes, 320x320 input."""
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', 'retinanet_repvgg-a0_1x.py'))
    base = tmp_path / 'mask_rcnn_base.py'
    base.write_text("_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'\n")
    mask_rcnn = Config.fromfile(str(base))
    model = mask_rcnn.model
    model.backbone = dict(cfg.model.backbone, init_cfg=None)  # offline: no hub download
    model.neck.in_channels = cfg.model.neck.in_channels
    model.roi_head.bbox_head.num_classes = 3
    model.roi_head.mask_head.num_classes = 3
    model.test_cfg.rpn.nms_pre = 200
    model.test_cfg.rpn.max_per_img = 100
    mask_rcnn.model = model
    mask_rcnn.custom_imports = cfg.custom_imports
    for step in mask_rcnn.test_dataloader.dataset.pipeline:
        if step['type'] == 'Resize':
            step.update(scale=(320, 320), keep_ratio=False)
    mask_rcnn.test_pipeline = mask_rcnn.test_dataloader.dataset.pipeline
    return mask_rcnn


def test_mask_rcnn_repvgg_instance_export(tmp_path):
    """RoIAlign exports through the restored symbolic_opset9._cast_Long."""
    # untrained RPN: mmdeploy picks near-tie proposals over all levels, mmdet per level
    report = _run(tmp_path, 'instance-seg_onnxruntime_static.py', _mask_rcnn_cfg(tmp_path),
                  '--max-unmatched', '2')
    graph, agree = report['graph'], report['agreement']
    assert report['ok'], report['errors']
    assert graph['bn_nodes'] == 0 and graph['parallel_conv_adds'] == []
    assert graph['conv_weights'] == graph['torch_conv2d'] > 0
    assert agree['matched'] >= 18 and agree['unmatched'] <= 2
    assert agree['max_box_abs_diff'] < 1.0 and agree['max_score_abs_diff'] < 1e-3
    assert agree['min_mask_iou'] >= 0.9
