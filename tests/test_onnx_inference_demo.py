"""demo/onnx_inference.py: plain onnxruntime + numpy give mmdeploy's detections (issue 17, item 7)."""
import json
import os.path as osp
import runpy
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip('mmdeploy')
pytest.importorskip('onnxruntime')

from conftest import REPO_ROOT  # noqa: E402
from conftest import shared_data  # noqa: E402
from test_int8 import _shapes_cfg, deploy_tool, shapes_root  # noqa: E402,F401

from mmengine.config import Config  # noqa: E402

from test_export import DEPLOY_DIR, _random_checkpoint  # noqa: E402

DEMO = osp.join(REPO_ROOT, 'demo', 'onnx_inference.py')


def _coco_image() -> str:
    """640x426: the keep-ratio resize makes it 128x85, padded to 128x96."""
    return osp.join(shared_data('coco128'), 'train2017', '000000000025.jpg')


@pytest.fixture(scope='module')
def exported(tmp_path_factory, shapes_root):  # noqa: F811
    """A keep-ratio detector exported on a 640x426 COCO image."""
    tmp = tmp_path_factory.mktemp('demo')
    cfg_path = _shapes_cfg(shapes_root, tmp)
    ckpt = _random_checkpoint(Config.fromfile(cfg_path), str(tmp / 'unfused.pth'))
    report = deploy_tool.main([osp.join(DEPLOY_DIR, 'detection_onnxruntime_static.py'), cfg_path,
                               ckpt, _coco_image(), '--work-dir', str(tmp / 'work')])
    return report


def test_report_records_the_network_input(exported):
    assert exported['ok'], exported['errors']
    # boxes reaching into the padding were clipped to the image before comparing with PyTorch
    assert exported['agreement']['boxes_clipped_to_image'] > 0
    assert exported['agreement']['max_box_abs_diff'] < 1.0
    prep = exported['preprocessing']
    assert prep['onnx_input']['shape'] == [1, 3, 96, 128] == exported['input_shape']
    assert prep['check_image']['ori_shape'] == [426, 640]
    assert prep['check_image']['img_shape'] == [85, 128]
    assert prep['classes'] == ['circle', 'square', 'triangle']
    assert prep['data_preprocessor']['pad_size_divisor'] == 32


def test_demo_detections_equal_mmdeploy_inference_model(exported):
    from mmdeploy.apis import inference_model
    demo = runpy.run_path(DEMO)  # its functions, without running main
    boxes, scores, labels = demo['detect'](exported['onnx'], _coco_image(),
                                           exported['preprocessing'])
    ref = inference_model(exported['fused_config'], osp.join(DEPLOY_DIR,
                          'detection_onnxruntime_static.py'), [exported['onnx']], _coco_image(),
                          'cpu')[0].pred_instances
    assert len(scores) == len(ref.scores) > 0
    np.testing.assert_array_equal(labels, ref.labels.numpy())
    np.testing.assert_allclose(scores, ref.scores.numpy(), rtol=0, atol=1e-6)
    # the one difference: mmdeploy leaves boxes that reach into the padding (y up to 481
    # on this 426-pixel-high image); the demo clips them to the image, as mmdet does
    ref_boxes = ref.bboxes.numpy()
    beyond = (ref_boxes[:, 3] > 426) | (ref_boxes[:, 2] > 640)
    assert beyond.any()
    clipped = ref_boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, 640)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, 426)
    np.testing.assert_allclose(boxes, clipped, rtol=0, atol=1e-3)
    np.testing.assert_allclose(boxes[~beyond], ref_boxes[~beyond], rtol=0, atol=1e-3)
    # boxes are in the original image: 640x426, not the 128x96 network input
    assert boxes[:, 2].max() > 200 and boxes[:, 3].max() <= 426


def test_demo_runs_without_mmdeploy_torch_or_mmdet(exported, tmp_path):
    out = str(tmp_path / 'detections.jpg')
    probe = (f'import runpy, sys; sys.argv = {[DEMO, exported["onnx"], _coco_image(), "--out", out, "--score-thr", "0.0"]!r}; '
             f'runpy.run_path({DEMO!r}, run_name="__main__"); '
             'print(sorted(m for m in ("torch", "mmdeploy", "mmdet", "mmengine", "mmcv") if m in sys.modules))')
    result = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                            check=True, cwd=str(tmp_path))
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == '[]', lines[-1]
    assert 'detections with score >= 0.0' in result.stdout and 'drawn into' in result.stdout
    import cv2
    assert cv2.imread(out).shape == (426, 640, 3)


def test_demo_refuses_an_image_of_another_shape_for_a_static_graph(exported, tmp_path):
    import cv2
    odd = str(tmp_path / 'tall.png')
    cv2.imwrite(odd, np.zeros((600, 300, 3), np.uint8))
    demo = runpy.run_path(DEMO)
    with pytest.raises(ValueError, match=r'becomes \[1, 3, 128, 64\].*fixed to \[1, 3, 96, 128\]'):
        demo['detect'](exported['onnx'], odd, exported['preprocessing'])
    with open(osp.join(osp.dirname(exported['onnx']), 'report.json')) as f:
        assert json.load(f)['preprocessing']['onnx_input']['name'] == 'input'
