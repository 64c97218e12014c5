"""tools/deploy.py --int8: quantization-friendly RetinaNet -> fp32 ONNX -> INT8 ONNX, measured."""
import json
import os
import os.path as osp
import shutil
import sys

import pytest

pytest.importorskip('mmdeploy')
pytest.importorskip('onnxruntime.quantization')

from conftest import REPO_ROOT  # noqa: E402
from test_export import DEPLOY_DIR, _random_checkpoint  # noqa: E402

sys.path.insert(0, osp.join(REPO_ROOT, 'tools'))
import deploy as deploy_tool  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

from mmrep.datasets.shapes import make_shapes_dataset  # noqa: E402
from mmrep.deploy.quantize import Int8InputError, PipelineCalibrationReader  # noqa: E402

STATIC = osp.join(DEPLOY_DIR, 'detection_onnxruntime_static.py')
# a small QARepVGG: two blocks per stage beyond the stem, widths 16/32/64/128
TINY_ARCH = dict(num_blocks=[1, 2, 1, 1], width_factor=[0.25, 0.25, 0.25, 0.25])


@pytest.fixture(scope='module')
def shapes_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes'))
    make_shapes_dataset(root, num_train=2, num_val=6, size=128)
    return root + '/'


def _shapes_cfg(root: str, tmp_path, val_ann: str = 'annotations/val.json') -> str:
    """retinanet_qarepvgg-a0_shapes_demo with a tiny QARepVGG at 128 px, every box kept."""
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', 'retinanet_qarepvgg-a0_shapes_demo.py'))
    assert cfg.model.backbone.quant_friendly
    cfg.model.backbone.arch = TINY_ARCH
    cfg.model.neck.in_channels = [16, 32, 64, 128]
    cfg.model.test_cfg.score_thr = 0.0
    cfg.train_dataloader.dataset.data_root = root
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = root
        loader.dataset.ann_file = val_ann
        for step in loader.dataset.pipeline:
            if step['type'] == 'Resize':
                step['scale'] = (128, 128)
    cfg.test_pipeline = cfg.test_dataloader.dataset.pipeline
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        evaluator.ann_file = root + val_ann
    path = str(tmp_path / 'model_cfg.py')
    cfg.dump(path)
    return path


def _deploy(tmp_path, cfg_path, root, *extra):
    ckpt = _random_checkpoint(Config.fromfile(cfg_path), str(tmp_path / 'unfused.pth'))
    return deploy_tool.main([STATIC, cfg_path, ckpt, osp.join(root, 'val', 'val_0000.png'),
                             '--work-dir', str(tmp_path / 'work'), *extra])


def test_int8_end_to_end_report(tmp_path, shapes_root, capsys):
    report = _deploy(tmp_path, _shapes_cfg(shapes_root, tmp_path), shapes_root,
                     '--int8', '--calib-images', '2', '--eval')
    assert report['ok'], report['errors']
    int8 = report['int8']
    assert int8['calibration_images'] == 2 and int8['calibration_method'] == 'minmax'
    assert osp.isfile(int8['onnx']) and int8['onnx'] != report['onnx']
    # held out: calibrated on training images, evaluated on every val image, none shared
    assert int8['calibration_source'] == 'train'
    assert int8['eval_images'] == len(int8['eval_image_ids']) == 6
    assert len(int8['calibration_image_ids']) == 2
    assert int8['calibration_image_ids'] == ['train_0000.png', 'train_0001.png']
    assert int8['eval_image_ids'] == [f'val_{i:04d}.png' for i in range(6)]
    # every conv of the INT8 graph reads int8 weights through DequantizeLinear
    assert int8['graph']['quantized_convs'] == int8['graph']['conv_nodes'] > 0
    assert int8['graph']['quantize_nodes'] > 0
    assert int8['latency_ms_fp32'] > 0 and int8['latency_ms_int8'] > 0
    assert int8['latency_input_shape'] == [1, 3, 128, 128]
    for key in ('bbox_mAP_fp32', 'bbox_mAP_int8', 'bbox_mAP_torch_fp32'):
        assert 0.0 <= int8[key] <= 1.0
    # the fp32 export evaluates as the fused PyTorch model does
    assert abs(int8['bbox_mAP_fp32'] - int8['bbox_mAP_torch_fp32']) <= 0.01
    assert int8['bbox_mAP_drop'] == pytest.approx(int8['bbox_mAP_fp32'] - int8['bbox_mAP_int8'])
    assert int8['bbox_mAP_drop_points'] == round(100 * int8['bbox_mAP_drop'], 2)
    agreement = int8['agreement_with_fp32']
    assert agreement['compared'] > 0 and agreement['matched'] + agreement['unmatched'] == \
        agreement['compared']
    with open(osp.join(tmp_path, 'work', 'report.json')) as f:
        on_disk = json.load(f)
    assert on_disk['int8']['calibration_images'] == 2
    assert 'coco/bbox_mAP' in on_disk['int8']['metrics']['int8'] or \
        on_disk['int8']['metrics']['int8'] == {}
    # the exact network input and its preprocessing (issue 17, item 7)
    assert report['input_shape'] == [1, 3, 128, 128]
    prep = report['preprocessing']
    assert prep['onnx_input'] == dict(name='input', shape=[1, 3, 128, 128], dtype='float32',
                                      layout='NCHW')
    assert prep['data_preprocessor']['mean'] == [123.675, 116.28, 103.53]
    assert prep['check_image']['scale_factor'] == [1.0, 1.0]
    # labelled evaluations, the drop in points; no unlabelled copypaste blocks (issue 17, item 8)
    out = capsys.readouterr().out
    for label in ('[1/3] PyTorch fp32 (fused): evaluating on 6 held-out images',
                  '[2/3] ONNX fp32 (onnxruntime)', '[3/3] ONNX INT8 (onnxruntime)',
                  'points) on 6 held-out images', 'points\n'):
        assert label in out, label
    assert 'bbox_mAP_copypaste' not in out
    assert f"drop ONNX fp32 (onnxruntime) -> ONNX INT8 (onnxruntime): " \
        f"{100 * int8['bbox_mAP_drop']:.1f} points" in out
    # only the documented files: no opset-13 intermediate left behind
    assert sorted(os.listdir(tmp_path / 'work')) == [
        'end2end.onnx', 'end2end_int8.onnx', 'fused.pth', 'fused_config.py', 'report.json']


def test_calibration_on_held_out_val_images(tmp_path, shapes_root):
    report = _deploy(tmp_path, _shapes_cfg(shapes_root, tmp_path), shapes_root,
                     '--int8', '--calib-images', '2', '--calib-from', 'val',
                     '--calib-method', 'minmax', '--eval', '--max-drop', '100')
    assert report['ok'], report['errors']
    int8 = report['int8']
    assert int8['calibration_source'] == 'val' and int8['calibration_method'] == 'minmax'
    calib, evaluated = int8['calibration_image_ids'], int8['eval_image_ids']
    assert len(calib) == 2 and len(evaluated) == int8['eval_images'] == 4
    assert not set(calib) & set(evaluated)
    assert len(set(calib) | set(evaluated)) == 6
    assert int8['max_drop_points'] == 100


def test_calibration_that_would_not_be_held_out_is_refused(tmp_path, shapes_root):
    cfg = Config.fromfile(_shapes_cfg(shapes_root, tmp_path))
    cfg.train_dataloader.dataset.ann_file = 'annotations/val.json'
    cfg.train_dataloader.dataset.data_prefix = dict(img='val/')
    path = str(tmp_path / 'train_is_val.py')
    cfg.dump(path)
    with pytest.raises(Int8InputError, match='would not be held out.*--calib-from val'):
        _deploy(tmp_path, path, shapes_root, '--int8', '--eval')
    with pytest.raises(Int8InputError, match='leaves none of the 6 val images'):
        _deploy(tmp_path, _shapes_cfg(shapes_root, tmp_path), shapes_root,
                '--int8', '--eval', '--calib-from', 'val', '--calib-images', '6')
    assert not osp.exists(tmp_path / 'work' / 'end2end.onnx')


def test_every_image_is_checked_against_a_static_graph_before_export(tmp_path, shapes_root):
    """Issue 16, item 18: a later val image of another size stops the run before the export."""
    import cv2
    root = str(tmp_path / 'odd_shapes') + '/'
    shutil.copytree(shapes_root, root)
    image = osp.join(root, 'val', 'val_0004.png')
    cv2.imwrite(image, cv2.resize(cv2.imread(image), (128, 64)))  # keeps its ratio: 128x64
    cfg_path = _shapes_cfg(root, tmp_path)
    with pytest.raises(Int8InputError, match=r'1 of the 8 images .* static input \[1, 3, 128, 128\]'
                       r'.*evaluation image val_0004.png: \[1, 3, 64, 128\].*dynamic-shape deploy config'):
        _deploy(tmp_path, cfg_path, root, '--int8', '--calib-images', '2', '--eval')
    assert not osp.exists(tmp_path / 'work' / 'end2end.onnx')
    # without --eval only the calibration images are fed: they fit
    report = _deploy(tmp_path, cfg_path, root, '--int8', '--calib-images', '2')
    assert report['ok'] and report['int8']['eval_images'] == 0


def test_accuracy_floor_fails_the_tool(monkeypatch, tmp_path, capsys):
    from mmrep.deploy.evaluation import AccuracyDropError, check_accuracy_floor
    section = dict(bbox_mAP_fp32=0.40, bbox_mAP_int8=0.35, bbox_mAP_drop=0.05)
    errors = check_accuracy_floor(section, ['bbox_mAP'], 1.0, 'ONNX fp32', 'ONNX INT8')
    assert errors == ['bbox_mAP fell 5.0 points from ONNX fp32 to ONNX INT8, more than '
                      '--max-drop 1']
    assert check_accuracy_floor(section, ['bbox_mAP'], 6.0, 'a', 'b') == []
    assert check_accuracy_floor(section, ['bbox_mAP'], None, 'a', 'b') == []
    seg = dict(mIoU_fp32=60.0, mIoU_int8=58.5, mIoU_drop=1.5)  # mmseg's mIoU is in percent
    assert check_accuracy_floor(seg, ['mIoU'], 1.0, 'a', 'b') == [
        'mIoU fell 1.5 points from a to b, more than --max-drop 1']

    def collapsed(*args, **kwargs):
        return dict(ok=False, errors=['int8: ' + errors[0]], graph=dict(
            bn_nodes=0, conv_weights=1, torch_conv2d=1), agreement={},
            int8=dict(accuracy_errors=errors, errors=errors), onnx='x.onnx')
    import mmrep.deploy
    monkeypatch.setattr(mmrep.deploy, 'export_and_verify', collapsed)
    cfg_path = str(tmp_path / 'cfg.py')
    Config(dict(model=dict(type='RetinaNet'))).dump(cfg_path)
    with pytest.raises(AccuracyDropError, match='fell 5.0 points'):
        deploy_tool.main([STATIC, cfg_path, 'c.pth', 'i.png', '--work-dir', str(tmp_path),
                          '--int8', '--eval'])


def test_no_calibration_images_is_refused_before_export(tmp_path, shapes_root):
    empty = osp.join(shapes_root, 'annotations', 'empty.json')
    with open(osp.join(shapes_root, 'annotations', 'val.json')) as f:
        categories = json.load(f)['categories']
    with open(empty, 'w') as f:
        json.dump(dict(images=[], annotations=[], categories=categories), f)
    cfg_path = _shapes_cfg(shapes_root, tmp_path, 'annotations/empty.json')
    with pytest.raises(Int8InputError, match='no images'):
        _deploy(tmp_path, cfg_path, shapes_root, '--int8')
    assert not osp.exists(tmp_path / 'work' / 'end2end.onnx')
    with pytest.raises(Int8InputError, match='at least 1'):
        _deploy(tmp_path, _shapes_cfg(shapes_root, tmp_path), shapes_root,
                '--int8', '--calib-images', '0')


def test_int8_options_need_int8():
    with pytest.raises(SystemExit):
        deploy_tool.parse_args(['d.py', 'm.py', 'c.pth', 'i.png', '--work-dir', 'w', '--eval'])
    args = deploy_tool.parse_args(['d.py', 'm.py', 'c.pth', 'i.png', '--work-dir', 'w',
                                   '--int8', '--calib-images', '8', '--eval'])
    assert args.int8 and args.calib_images == 8 and args.eval


def test_unsupported_task_is_refused(tmp_path, shapes_root):
    deploy_cfg = tmp_path / 'text_det.py'
    deploy_cfg.write_text(f"_base_ = ['{STATIC}']\n"
                          "codebase_config = dict(task='TextDetection')\n")
    cfg_path = _shapes_cfg(shapes_root, tmp_path)
    ckpt = _random_checkpoint(Config.fromfile(cfg_path), str(tmp_path / 'unfused.pth'))
    with pytest.raises(Int8InputError, match='TextDetection'):
        deploy_tool.main([str(deploy_cfg), cfg_path, ckpt,
                          osp.join(shapes_root, 'val', 'val_0000.png'),
                          '--work-dir', str(tmp_path / 'work'), '--int8'])


def test_calibration_image_of_another_size_than_a_static_graph():
    feeds = [dict(input=np.zeros((1, 3, 64, 96), np.float32))]
    reader = PipelineCalibrationReader(feeds, [1, 3, 64, 64])
    with pytest.raises(Int8InputError, match='dynamic-shape deploy config'):
        reader.get_next()
    ok = PipelineCalibrationReader(feeds, [1, 3, None, None])
    assert ok.get_next()['input'].shape == (1, 3, 64, 96) and ok.get_next() is None
    ok.rewind()
    assert ok.get_next() is not None and ok.count == 2


@pytest.mark.parametrize('method', ['minmax', 'entropy', 'percentile'])
def test_calibration_methods_choose_different_ranges(tmp_path, method):
    """Each --calib-method quantizes; entropy and percentile clip the outlier minmax keeps."""
    import onnx
    from onnx import numpy_helper
    from mmrep.deploy.quantize import quantize_onnx
    path = str(tmp_path / 'conv.onnx')
    torch.manual_seed(0)
    torch.onnx.export(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                          torch.nn.Conv2d(8, 8, 3)).eval(),
                      (torch.rand(1, 3, 64, 64),), path, opset_version=13, input_names=['input'],
                      dynamo=False)
    rng = np.random.default_rng(0)
    # 16 x 12288 values: percentile's 99.999th lies below the one outlier
    feeds = [dict(input=rng.standard_normal((1, 3, 64, 64)).astype(np.float32))
             for _ in range(16)]
    feeds[0]['input'][0, 0, 0, 0] = 1000.0  # one outlier
    out = str(tmp_path / f'{method}.onnx')
    quantize_onnx(path, out, PipelineCalibrationReader(feeds, [1, 3, 64, 64]),
                  calib_method=method)
    graph = onnx.load(out).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    # the scale of the first QuantizeLinear: the graph input's range
    first = next(n for n in graph.node if n.op_type == 'QuantizeLinear')
    scale = float(inits[first.input[1]])
    if method == 'minmax':
        assert scale > 1000.0 / 255 * 0.99  # the outlier sets the range
    else:
        assert scale < 1000.0 / 255 / 5  # clipped
