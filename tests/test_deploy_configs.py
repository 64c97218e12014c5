"""tools/deploy.py on every shipped config family, with random weights and small inputs.

Each shipped config is exported as it is, except for a smaller test input (and
every box kept, so that there are detections to compare): fusion, mmdeploy
export, graph checks (only the convs inference runs) and onnxruntime agreement.
"""
import os
import os.path as osp
import sys

import mmcv
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

pytest.importorskip('mmdeploy')
pytest.importorskip('onnxruntime')

from conftest import REPO_ROOT, shared_data  # noqa: E402
from fusion_check import randomize_bn  # noqa: E402
from test_export import DEPLOY_DIR, _coco_image  # noqa: E402
from test_export import _random_checkpoint as _random_bn_checkpoint  # noqa: E402

sys.path.insert(0, osp.join(REPO_ROOT, 'tools'))
import deploy as deploy_tool  # noqa: E402

from mmengine.config import Config  # noqa: E402
from mmengine.registry import MODELS, init_default_scope  # noqa: E402

from mmrep.deploy.compare import compare_segmentation_logits  # noqa: E402
from mmrep.deploy.rewriters import exact_adaptive_avg_pool2d  # noqa: E402

SIZE = (224, 224)


def _small_input(cfg: Config, size=SIZE) -> None:
    for loader in (cfg.test_dataloader, cfg.val_dataloader):
        for step in loader.dataset.pipeline:
            if step['type'] == 'Resize':
                step.update(scale=size, keep_ratio=False)
            if step['type'] == 'Pad' and 'size' in step:
                step['size'] = size
    cfg.test_pipeline = cfg.test_dataloader.dataset.pipeline


def _random_checkpoint(cfg: Config, path: str) -> str:
    """Random weights, with BN statistics measured on random images (train-mode passes).

    Arbitrary BN statistics let activations grow through deep stacks until
    YOLOX's exp() box sizes overflow (infinite boxes, which no comparison can
    match); measured ones, the heads' included, keep every layer's output
    normalized, as in a trained model.
    """
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    randomize_bn(model)  # random affine parameters
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the passes
    model.train()
    with torch.no_grad():
        for _ in range(2):
            # the check image and its mirror through the model's own preprocessing (YOLOX reads
            # 0-255 unnormalized): noise images give far smaller deep activations than photos
            photo = torch.from_numpy(mmcv.imresize(mmcv.imread(_coco_image()), SIZE[::-1]))
            photo = photo.permute(2, 0, 1).contiguous()
            pixels = [photo, photo.flip(-1)]
            inputs = model.data_preprocessor(dict(inputs=pixels), False)['inputs']
            feats = model.extract_feat(inputs)
            for name in ('bbox_head', 'decode_head'):  # heads with BNs (YOLOX's, UPerNet's)
                if getattr(model, name, None) is not None:
                    getattr(model, name)(feats)
    torch.save({'state_dict': model.state_dict()}, path)
    return path


def _deploy(tmp_path, config: str, deploy_cfg: str, image: str, *extra,
            checkpoint=_random_checkpoint) -> dict:
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', config))
    cfg.model.backbone.init_cfg = None  # offline: the configs name ImageNet weights on the hub
    _small_input(cfg)
    test_cfg = cfg.model.get('test_cfg') or {}
    for stage in (test_cfg, test_cfg.get('rcnn') or {}):
        if 'score_thr' in stage:  # keep every box: there must be detections to compare
            stage['score_thr'] = 0.0
    if cfg.get('default_scope') == 'mmseg':
        cfg.model.data_preprocessor.size = None  # no padding to the training crop
    cfg_path = str(tmp_path / 'model_cfg.py')
    cfg.dump(cfg_path)
    ckpt = checkpoint(cfg, str(tmp_path / 'unfused.pth'))
    return deploy_tool.main([osp.join(DEPLOY_DIR, deploy_cfg), cfg_path, ckpt, image,
                             '--work-dir', str(tmp_path / 'work'), *extra])


def _assert_plain_graph(report):
    graph = report['graph']
    assert report['ok'], report['errors']
    assert graph['bn_nodes'] == 0 and graph['parallel_conv_adds'] == []
    assert graph['conv_weights'] == graph['torch_conv2d'] > 0


@pytest.mark.parametrize('config', [
    'retinanet_repvgg-a0_1x.py',
    'retinanet_qarepvgg-a0_1x.py',
    'retinanet_orepa-r18_1x.py',
    'retinanet_repghost_reppafpn_1x.py',
    'yolox-style_repvgg-a0_reppafpn.py',
    'retinanet_mobileone-s1_fpn_1x_coco.py',
])
def test_detection_configs_export(tmp_path, config):
    report = _deploy(tmp_path, config, 'detection_onnxruntime_static.py', _coco_image())
    _assert_plain_graph(report)
    agree = report['agreement']
    assert agree['compared'] > 0 and agree['unmatched'] == 0
    assert report['input_shape'][-2:] == list(SIZE)


def test_mask_rcnn_reppafpn_config_exports(tmp_path):
    # untrained RPN: mmdeploy picks near-tie proposals over all levels, mmdet per level;
    # arbitrary BN statistics (as test_export) make the proposal scores less tied
    report = _deploy(tmp_path, 'mask-rcnn_repvgg-a0_reppafpn_1x.py',
                     'instance-seg_onnxruntime_static.py', _coco_image(), '--max-unmatched', '2',
                     checkpoint=_random_bn_checkpoint)
    _assert_plain_graph(report)
    assert report['agreement']['matched'] >= 18
    assert report['agreement']['min_mask_iou'] >= 0.9


def test_upernet_camvid_config_exports_without_the_auxiliary_head(tmp_path):
    camvid = shared_data('camvid')
    image = osp.join(camvid, 'test', sorted(os.listdir(osp.join(camvid, 'test')))[0])
    report = _deploy(tmp_path, 'upernet_repvgg-a0_camvid.py',
                     'segmentation_onnxruntime_static.py', image)
    graph = report['graph']
    _assert_plain_graph(report)
    # the auxiliary FCN head (2 convs) trains but never runs at inference
    assert graph['torch_conv2d_total'] == graph['torch_conv2d'] + 2
    assert report['agreement']['pixels'] == 480 * 360
    # 224 px: a 7x7 last feature that pool scales 2, 3 and 6 do not divide; the exact
    # pooling (MatMuls) keeps the logits equal (mmdeploy's AvgPool was 9% off)
    assert graph['op_counts'].get('MatMul', 0) > 0
    assert report['agreement']['logits_rel_diff'] < 1e-5
    assert report['agreement']['logit_argmax_agreement'] == 1.0


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 17), w=st.integers(1, 17), out_h=st.integers(1, 7),
       out_w=st.integers(1, 7))
def test_exact_adaptive_avg_pool2d(h, w, out_h, out_w):
    x = torch.randn(2, 3, h, w)
    got = exact_adaptive_avg_pool2d(x, (out_h, out_w))
    assert torch.allclose(got, F.adaptive_avg_pool2d(x, (out_h, out_w)), atol=1e-5)


def test_segmentation_logits_tell_ties_from_differences():
    ref = torch.zeros(1, 3, 4, 4)
    ref[:, 0] = 1.0
    ref[:, 1, 0, 0] = 1.0 - 1e-6  # one pixel where classes 0 and 1 tie
    tie = ref.clone()
    tie[:, 1, 0, 0] = 1.0 + 1e-6  # rounding flips its argmax
    cmp = compare_segmentation_logits(ref, tie)
    assert cmp['logit_argmax_flips'] == 1 and cmp['logits_rel_diff'] < 1e-5
    assert cmp['flip_max_margin'] < 1e-5
    real = ref.clone()
    real[:, 2, 1:, 1:] = 5.0  # a real difference flips pixels with a clear margin
    cmp = compare_segmentation_logits(ref, real)
    assert cmp['logit_argmax_flips'] == 9 and cmp['logits_rel_diff'] == 5.0
    assert cmp['flip_max_margin'] == 1.0


def test_upernet_int8_with_miou(tmp_path):
    camvid = shared_data('camvid')
    image = osp.join(camvid, 'test', sorted(os.listdir(osp.join(camvid, 'test')))[0])
    report = _deploy(tmp_path, 'upernet_repvgg-a0_camvid.py',
                     'segmentation_onnxruntime_static.py', image,
                     '--int8', '--calib-images', '2', '--eval', '--max-drop', '-1')
    assert report['ok'], report['errors']
    int8 = report['int8']
    assert int8['calibration_source'] == 'train' and int8['max_drop_points'] is None
    assert int8['graph']['quantized_convs'] == int8['graph']['conv_nodes'] == 35
    assert int8['agreement_with_fp32']['pixels'] == 480 * 360
    assert int8['eval_images'] == len(os.listdir(osp.join(camvid, 'val')))
    for kind in ('fp32', 'int8', 'torch_fp32'):
        assert 0.0 <= int8[f'mIoU_{kind}'] <= 100.0
    # the fp32 export's mIoU is the fused PyTorch model's (exact pooling export)
    assert abs(int8['mIoU_fp32'] - int8['mIoU_torch_fp32']) < 1.0
