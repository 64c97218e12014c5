"""tools/deploy.py --int8: quantization-friendly RetinaNet -> fp32 ONNX -> INT8 ONNX, measured."""
import json
import os.path as osp
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


def test_int8_end_to_end_report(tmp_path, shapes_root):
    report = _deploy(tmp_path, _shapes_cfg(shapes_root, tmp_path), shapes_root,
                     '--int8', '--calib-images', '4', '--eval')
    assert report['ok'], report['errors']
    int8 = report['int8']
    assert int8['calibration_images'] == 4
    assert osp.isfile(int8['onnx']) and int8['onnx'] != report['onnx']
    # every conv of the INT8 graph reads int8 weights through DequantizeLinear
    assert int8['graph']['quantized_convs'] == int8['graph']['conv_nodes'] > 0
    assert int8['graph']['quantize_nodes'] > 0
    assert int8['latency_ms_fp32'] > 0 and int8['latency_ms_int8'] > 0
    assert int8['latency_input_shape'] == [1, 3, 128, 128]
    assert int8['eval_images'] == 6
    for key in ('bbox_mAP_fp32', 'bbox_mAP_int8', 'bbox_mAP_torch_fp32'):
        assert 0.0 <= int8[key] <= 1.0
    # the fp32 export evaluates as the fused PyTorch model does
    assert abs(int8['bbox_mAP_fp32'] - int8['bbox_mAP_torch_fp32']) <= 0.01
    assert int8['bbox_mAP_drop'] == pytest.approx(int8['bbox_mAP_fp32'] - int8['bbox_mAP_int8'])
    agreement = int8['agreement_with_fp32']
    assert agreement['compared'] > 0 and agreement['matched'] + agreement['unmatched'] == \
        agreement['compared']
    with open(osp.join(tmp_path, 'work', 'report.json')) as f:
        on_disk = json.load(f)
    assert on_disk['int8']['calibration_images'] == 4
    assert 'coco/bbox_mAP' in on_disk['int8']['metrics']['int8'] or \
        on_disk['int8']['metrics']['int8'] == {}


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
    batches = [dict(x=np.zeros((1, 3, 64, 96), np.float32))]
    reader = PipelineCalibrationReader(batches, lambda b: torch.from_numpy(b['x']),
                                       'input', [1, 3, 64, 64])
    with pytest.raises(Int8InputError, match='dynamic-shape deploy config'):
        reader.get_next()
    ok = PipelineCalibrationReader(batches, lambda b: torch.from_numpy(b['x']),
                                   'input', [1, 3, None, None])
    assert ok.get_next()['input'].shape == (1, 3, 64, 96) and ok.get_next() is None
