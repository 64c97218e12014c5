"""tools/deploy.py --backend openvino: detection with NMS, instance and semantic segmentation
read by OpenVINO from mmdeploy's onnxruntime-style export, checked against PyTorch; NNCF INT8
calibrated on held-out images; the report's openvino section."""
import json
import os.path as osp

import pytest

pytest.importorskip('mmdeploy')
pytest.importorskip('openvino')
from mmrep import compat  # noqa: E402
if compat.nncf_unavailable():  # the classic stack: nncf 3.x needs torch>=2.3
    pytest.skip(compat.nncf_unavailable(), allow_module_level=True)

from test_export import (DEPLOY_DIR, _coco_image, _mask_rcnn_cfg, _random_checkpoint,  # noqa: E402
                         _run_segmentor)
from test_int8 import _shapes_cfg, deploy_tool, shapes_root  # noqa: E402,F401

from mmengine.config import Config  # noqa: E402

from mmrep.deploy.calibration import DeployInputError  # noqa: E402
from mmrep.deploy.openvino import default_precision  # noqa: E402


def test_detection_openvino_int8_end_to_end(tmp_path, shapes_root, capsys, monkeypatch):  # noqa: F811
    """The issue's command, from a project folder outside the repo, with mmrep:: names."""
    cfg_path = _shapes_cfg(shapes_root, tmp_path)
    ckpt = _random_checkpoint(Config.fromfile(cfg_path), str(tmp_path / 'unfused.pth'))
    project = tmp_path / 'project'
    project.mkdir()
    monkeypatch.chdir(project)
    report = deploy_tool.main([
        'mmrep::configs/deploy/detection_onnxruntime_static.py', cfg_path, ckpt,
        osp.join(shapes_root, 'val', 'val_0000.png'), '--work-dir', 'work',
        '--backend', 'openvino', '--precision', 'int8', '--eval', '--calib-images', '2',
        '--max-drop', '100'])
    assert report['ok'], report['errors']
    ov = report['openvino']
    assert ov['precision'] == 'int8' and ov['nncf_preset'] == 'performance'
    assert ov['inference_precision'] in ('bf16', 'f32')  # what the float ops run at
    assert ov['quantized_ops']['Convolution'] > 0
    # OpenVINO f32 reads mmdeploy's graph (NMS included) as onnxruntime does
    f32 = ov['agreement_f32_with_torch']
    assert f32['compared'] > 0 and f32['unmatched'] == 0 and f32['max_score_abs_diff'] < 1e-3
    assert 'agreement_int8_with_f32' in ov
    assert osp.isfile(project / 'work' / 'end2end.xml') and osp.isfile(project / 'work' / 'end2end.bin')
    assert ov['xml'].endswith('end2end.xml') and ov['bin'].endswith('end2end.bin')
    assert ov['latency_ms_ort_fp32'] > 0 and ov['latency_ms_openvino'] > 0
    assert ov['latency_threads'] == 1 and ov['latency_input_shape'] == [1, 3, 128, 128]
    # held out: calibration on training images, evaluation on every val image
    assert ov['calibration_image_ids'] == ['train_0000.png', 'train_0001.png']
    assert ov['eval_image_ids'] == [f'val_{i:04d}.png' for i in range(6)]
    for key in ('bbox_mAP_torch_fp32', 'bbox_mAP_fp32', 'bbox_mAP_int8'):
        assert 0.0 <= ov[key] <= 1.0
    assert ov['bbox_mAP_drop'] == pytest.approx(ov['bbox_mAP_fp32'] - ov['bbox_mAP_int8'])
    with open(project / 'work' / 'report.json') as f:
        assert json.load(f)['openvino']['precision'] == 'int8'
    out = capsys.readouterr().out
    for label in ('OpenVINO INT8: calibrating (NNCF preset performance) on 2 train images',
                  '[1/3] PyTorch fp32 (fused)', '[2/3] OpenVINO f32', '[3/3] OpenVINO INT8 (NNCF)',
                  'drop OpenVINO f32 -> OpenVINO INT8 (NNCF)'):
        assert label in out, label


def test_mask_rcnn_in_openvino(tmp_path):
    """Instance segmentation: standard RoiAlign and NonMaxSuppression, read by OpenVINO."""
    cfg = _mask_rcnn_cfg(tmp_path)
    cfg_path = str(tmp_path / 'model_cfg.py')
    cfg.dump(cfg_path)
    ckpt = _random_checkpoint(cfg, str(tmp_path / 'unfused.pth'))
    report = deploy_tool.main([osp.join(DEPLOY_DIR, 'instance-seg_onnxruntime_static.py'),
                               cfg_path, ckpt, _coco_image(), '--work-dir', str(tmp_path / 'work'),
                               '--max-unmatched', '2', '--backend', 'openvino', '--precision', 'f32',
                               '--latency-repeats', '2'])
    assert report['ok'], report['errors']
    f32 = report['openvino']['agreement_f32_with_torch']
    assert f32['matched'] >= 18 and f32['min_mask_iou'] >= 0.9
    assert f32['max_box_abs_diff'] < 1.0
    assert report['openvino']['inference_precision'] == 'f32'
    assert report['openvino']['latency_ms_openvino'] > 0
    assert 'agreement_f32_with_f32' not in report['openvino']


def test_segmentation_in_openvino_default_precision(tmp_path, capsys):
    report = _run_segmentor(tmp_path, '--backend', 'openvino')
    assert report['ok'], report['errors']
    ov = report['openvino']
    # no --precision: OpenVINO's own default on this CPU, stated
    assert ov['requested_precision'] is None and ov['precision'] == default_precision()
    assert f"OpenVINO precision: {ov['precision']} (OpenVINO's default" in capsys.readouterr().out
    assert ov['agreement_f32_with_torch']['logits_rel_diff'] < 1e-3
    if ov['precision'] == 'bf16':
        assert ov['inference_precision'] == 'bf16'
        assert 0.5 < ov['agreement_bf16_with_f32']['pixel_agreement'] <= 1.0


def _args(*extra):
    return ['d.py', 'm.py', 'c.pth', 'i.png', '--work-dir', 'w', *extra]


@pytest.mark.parametrize('extra, message', [
    (['--precision', 'int8'], '--precision applies to --backend openvino'),
    (['--backend', 'openvino', '--int8'], 'ask for INT8 with --precision int8'),
    (['--backend', 'openvino', '--precision', 'int8', '--calib-method', 'entropy'],
     'for openvino is one of performance, mixed'),
    (['--int8', '--calib-method', 'mixed'], 'for onnxruntime is one of minmax, entropy, percentile'),
    (['--backend', 'openvino', '--calib-images', '4'], '--calib-images and --calib-method apply'),
    (['--eval'], '--eval compares an INT8 or OpenVINO model'),
])
def test_option_combinations_are_refused(capsys, extra, message):
    with pytest.raises(SystemExit):
        deploy_tool.parse_args(_args(*extra))
    assert message in capsys.readouterr().err


def test_mmdeploy_openvino_deploy_config_is_refused_before_export(tmp_path, shapes_root):  # noqa: F811
    deploy_cfg = tmp_path / 'detection_openvino.py'
    deploy_cfg.write_text(f"_base_ = ['{osp.join(DEPLOY_DIR, 'detection_onnxruntime_static.py')}']\n"
                          "backend_config = dict(type='openvino')\n")
    cfg_path = _shapes_cfg(shapes_root, tmp_path)
    with pytest.raises(DeployInputError, match="backend is 'openvino'.*--backend openvino"):
        deploy_tool.main([str(deploy_cfg), cfg_path, 'unused.pth',
                          osp.join(shapes_root, 'val', 'val_0000.png'),
                          '--work-dir', str(tmp_path / 'work'), '--backend', 'openvino'])
    assert not osp.exists(tmp_path / 'work')


def test_deformable_conv_is_refused_naming_the_op(tmp_path):
    """The real case of an op OpenVINO rejects: mmdeploy's DCNv2 op of an onnxruntime graph."""
    from test_export import _run, _small_detector_cfg
    from mmrep.deploy import ExportCheckError
    cfg = _small_detector_cfg()
    cfg.model.neck.conv_cfg = dict(type='DCNv2', deform_groups=1)
    with pytest.raises(ExportCheckError, match=r'mmdeploy::MMCVModulatedDeformConv2d \(x\d+\): '
                                               r'a deformable convolution.*onnxruntime'):
        _run(tmp_path, 'detection_onnxruntime_static.py', cfg, '--backend', 'openvino',
             '--precision', 'f32')
    with open(tmp_path / 'work' / 'report.json') as f:
        report = json.load(f)
    # the onnxruntime export itself is fine and verified; only OpenVINO cannot read it
    assert report['agreement']['unmatched'] == 0 and not report['graph']['errors']
    assert list(report['openvino']['unsupported_ops']) == ['mmdeploy::MMCVModulatedDeformConv2d']
    assert not (tmp_path / 'work' / 'end2end.xml').exists()
