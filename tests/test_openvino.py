"""mmrep.deploy.openvino: ONNX -> OpenVINO at f32 / bf16 / NNCF INT8, and the ops it refuses."""
import numpy as np
import pytest
import torch

pytest.importorskip('openvino')
pytest.importorskip('onnxruntime')

import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from mmrep.deploy import openvino as mov  # noqa: E402


class _ConvNet(torch.nn.Module):
    """Plain, fused-style convs: 3 dense, 1 depthwise, ReLU between."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, 1, 1, groups=16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, 2, 1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 8, 1))

    def forward(self, x):
        return self.body(x)


@pytest.fixture(scope='module')
def convnet_onnx(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('ov') / 'convnet.onnx')
    torch.onnx.export(_ConvNet().eval(), (torch.rand(1, 3, 64, 64),), path, opset_version=13,
                      input_names=['input'], output_names=['out'], dynamo=False)
    return path


def _inputs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(n)]


def _ort(path, x):
    import onnxruntime as ort
    return ort.InferenceSession(path, providers=['CPUExecutionProvider']).run(None, {'input': x})[0]


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_f32_equals_onnxruntime(convnet_onnx):
    model = mov.compile_onnx(convnet_onnx, 'f32', threads=1)
    assert model.inference_precision == 'f32' and model.precision == 'f32'
    assert model.input_names == ['input'] and model.output_names == ['out']
    x = _inputs(1)[0]
    (out,) = model({'input': x})
    assert out.shape == (1, 8, 16, 16)
    assert _rel(out, _ort(convnet_onnx, x)) < 1e-5
    (again,) = model(x)  # the one input's array alone
    np.testing.assert_array_equal(again, out)


def test_bf16_is_what_openvino_runs(convnet_onnx):
    if 'bf16' not in mov.cpu_float_precisions():
        with pytest.raises(mov.OpenVINOError, match='no bf16'):
            mov.compile_onnx(convnet_onnx, 'bf16')
        return
    model = mov.compile_onnx(convnet_onnx, 'bf16')
    assert model.inference_precision == 'bf16'
    x = _inputs(1)[0]
    rel = _rel(model(x)[0], _ort(convnet_onnx, x))
    assert 0 < rel < 0.05  # bf16 rounds (8 bits of mantissa), so not equal, but close
    assert mov.default_precision() == 'bf16'  # OpenVINO's own default on such a CPU


def test_nncf_int8_quantizes_every_conv_and_saves_ir(convnet_onnx, tmp_path):
    from mmrep import compat
    if compat.nncf_unavailable():  # the classic stack (torch 2.1)
        pytest.skip(compat.nncf_unavailable())
    calibration = [{'input': x} for x in _inputs(8, seed=1)]
    model = mov.compile_onnx(convnet_onnx, 'int8', calibration=calibration)
    assert model.precision == 'int8' and model.quantized
    assert mov.quantized_op_count(model.model) == {'Convolution': 3, 'GroupConvolution': 1}
    x = _inputs(1, seed=2)[0]
    out = model(x)[0]
    ref = _ort(convnet_onnx, x)
    assert 0 < _rel(out, ref) < 0.15
    xml, binary = model.save(str(tmp_path / 'end2end.xml'))
    assert binary.endswith('end2end.bin')
    import openvino as ov
    reread = mov.OpenVINOModel(ov.Core().read_model(xml), model.inference_precision, quantized=True)
    np.testing.assert_allclose(reread(x)[0], out, rtol=0, atol=1e-5 * np.abs(out).max())
    mixed = mov.compile_onnx(convnet_onnx, 'int8', calibration=calibration, preset='mixed')
    assert mov.quantized_op_count(mixed.model) == {'Convolution': 3, 'GroupConvolution': 1}


def test_bad_requests_are_refused(convnet_onnx, tmp_path):
    with pytest.raises(mov.OpenVINOError, match="unknown OpenVINO precision 'fp16'"):
        mov.compile_onnx(convnet_onnx, 'fp16')
    with pytest.raises(mov.OpenVINOError, match='needs calibration'):
        mov.compile_onnx(convnet_onnx, 'int8')
    with pytest.raises(mov.OpenVINOError, match='at least one calibration'):
        mov.compile_onnx(convnet_onnx, 'int8', calibration=[])
    with pytest.raises(mov.OpenVINOError, match="unknown NNCF preset 'accuracy'"):
        mov.compile_onnx(convnet_onnx, 'int8', calibration=[_inputs(1)[0]], preset='accuracy')
    with pytest.raises(mov.OpenVINOError, match='threads'):
        mov.compile_onnx(convnet_onnx, 'f32', threads=0)
    with pytest.raises(FileNotFoundError, match='no ONNX file'):
        mov.compile_onnx(str(tmp_path / 'missing.onnx'))
    model = mov.compile_onnx(convnet_onnx, 'f32')
    with pytest.raises(mov.OpenVINOError, match=r"unknown input\(s\) \['image'\]"):
        model({'image': _inputs(1)[0]})
    with pytest.raises(mov.OpenVINOError, match='ends with .xml'):
        model.save(str(tmp_path / 'end2end.onnx'))


def _graph_with(domain, op_type, path):
    x = helper.make_tensor_value_info('input', TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info('out', TensorProto.FLOAT, None)
    relu = helper.make_node('Relu', ['input'], ['r'])
    custom = helper.make_node(op_type, ['r', 'r', 'r'], ['out'], domain=domain)
    model = helper.make_model(helper.make_graph([relu, custom], 'g', [x], [y]),
                              opset_imports=[helper.make_opsetid('', 11),
                                             helper.make_opsetid(domain, 1)])
    onnx.save(model, path)
    return path


@pytest.mark.parametrize('op_type, advice', [
    ('MMCVModulatedDeformConv2d', 'deformable convolution'),
    ('TRTBatchedNMS', 'standard ONNX NonMaxSuppression'),
    ('MMCVMultiLevelRoiAlign', 'keep this model on onnxruntime'),
])
def test_custom_ops_are_named_with_the_way_round(tmp_path, op_type, advice):
    path = _graph_with('mmdeploy', op_type, str(tmp_path / f'{op_type}.onnx'))
    assert mov.custom_ops(path) == {f'mmdeploy::{op_type}': 1}
    with pytest.raises(mov.OpenVINOUnsupportedOpError, match=f'mmdeploy::{op_type}') as error:
        mov.compile_onnx(path, 'f32')
    assert advice in str(error.value)


def test_mmdeploy_wrapper_checks_outputs(convnet_onnx):
    model = mov.compile_onnx(convnet_onnx, 'f32')

    class _BackendModel(torch.nn.Module):
        def __init__(self, names):
            super().__init__()
            self.wrapper = torch.nn.Module()
            self.wrapper.output_names = names

    backend = mov.use_in_mmdeploy_model(_BackendModel(['out']), model)
    outputs = backend.wrapper({'input': torch.from_numpy(_inputs(1)[0])})
    assert list(outputs) == ['out'] and outputs['out'].shape == (1, 8, 16, 16)
    assert backend.wrapper.output_to_list(outputs)[0] is outputs['out']
    with pytest.raises(mov.OpenVINOError, match=r"expects \['dets', 'labels'\]"):
        mov.use_in_mmdeploy_model(_BackendModel(['dets', 'labels']), model)


def test_nncf_that_does_not_import_with_this_torch_is_named_before_any_export(monkeypatch):
    """nncf 3.x needs torch>=2.3 (the classic stack has 2.1): OpenVINO INT8 is refused up front,
    naming why and what works instead; f32 and bf16 need no nncf."""
    import torch
    from mmrep import compat
    from mmrep.deploy import openvino_measure
    from mmrep.deploy.openvino import OpenVINOError
    problem = compat.nncf_unavailable()
    if tuple(int(p) for p in torch.__version__.split('.')[:2]) >= (2, 3):
        assert problem is None
    else:
        assert 'needs torch>=2.3' in problem
    monkeypatch.setattr(compat, 'nncf_unavailable',
                        lambda: 'nncf does not import with torch 2.1.2 (AttributeError: uint16)')
    with pytest.raises(OpenVINOError, match=r'torch 2\.1\.2 .*--precision bf16 or f32'):
        openvino_measure.check_openvino_request('ObjectDetection', dict(precision='int8'))
    openvino_measure.check_openvino_request('ObjectDetection', dict(precision='bf16'))
