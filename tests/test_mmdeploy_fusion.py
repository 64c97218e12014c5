"""mmdeploy's own ``torch2onnx`` exports the whole model fused (neck included), given an unfused checkpoint."""
import copy
import os.path as osp

import numpy as np
import pytest
import torch

pytest.importorskip('mmdeploy')
pytest.importorskip('onnxruntime')

import onnx  # noqa: E402
from mmdeploy.apis import torch2onnx  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import MODELS, init_default_scope  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from conftest import REPO_ROOT, shared_data  # noqa: E402
from fusion_check import randomize_bn  # noqa: E402
from mmrep import count_unfused, reparameterize_model  # noqa: E402
from mmrep.deploy import check_onnx_graph, fuse_in_mmdeploy_tasks  # noqa: E402

CASES = {
    'retinanet_repghost_reppafpn_1x.py': 'detection_onnxruntime_static.py',
    'mask-rcnn_repvgg-a0_reppafpn_1x.py': 'instance-seg_onnxruntime_static.py',
}


def _small_cfg(name: str) -> Config:
    """The repository config with a 320x320 test input (and fewer RPN proposals)."""
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', name))
    cfg.model.backbone.init_cfg = None  # offline: the config names ImageNet weights on the hub
    for step in cfg.test_dataloader.dataset.pipeline:
        if step['type'] == 'Resize':
            step.update(scale=(320, 320), keep_ratio=False)
    cfg.test_pipeline = cfg.test_dataloader.dataset.pipeline
    if 'rpn' in cfg.model.test_cfg:
        cfg.model.test_cfg.rpn.update(nms_pre=200, max_per_img=100)
    return cfg


def _unfused_model(cfg: Config) -> torch.nn.Module:
    """Training-form model with random weights and random BN statistics."""
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(cfg.model))
    model.init_weights()
    randomize_bn(model)
    return model.eval()


def _onnx_conv_weights(path: str) -> list:
    graph = onnx.load(path).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    tensors.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t)
                    for n in graph.node if n.op_type == 'Constant' and n.attribute[0].name == 'value'})
    return [tensors[name] for name in sorted({n.input[1] for n in graph.node if n.op_type == 'Conv'})]


def _unpaired(expected: list, found: list) -> tuple:
    """How many of ``expected`` have no equal array in ``found``, and how many of ``found`` are left."""
    left, missing = list(found), 0
    for weight in expected:
        match = next((i for i, w in enumerate(left)
                      if w.shape == weight.shape and np.allclose(w, weight, rtol=1e-5, atol=1e-6)), None)
        if match is None:
            missing += 1
        else:
            del left[match]
    return missing, len(left)


@pytest.mark.parametrize('config', sorted(CASES))
def test_mmdeploy_torch2onnx_fuses_whole_model(config, tmp_path):
    cfg = _small_cfg(config)
    cfg_path = str(tmp_path / 'model_cfg.py')
    cfg.dump(cfg_path)
    model = _unfused_model(cfg)
    ckpt = str(tmp_path / 'unfused.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    assert count_unfused(model.neck) > 0 and count_unfused(model.backbone) > 0

    deploy_cfg = osp.join(REPO_ROOT, 'configs', 'deploy', CASES[config])
    image = osp.join(shared_data('coco128'), 'train2017', '000000000009.jpg')
    torch2onnx(image, str(tmp_path), 'end2end.onnx', deploy_cfg, cfg_path, ckpt, 'cpu')

    fused = reparameterize_model(model)
    graph = check_onnx_graph(str(tmp_path / 'end2end.onnx'), fused)
    assert graph['ok'], graph['errors']
    assert graph['parallel_conv_adds'] == [] and graph['bn_nodes'] == 0
    expected = [m.weight.detach().numpy() for m in fused.modules() if isinstance(m, torch.nn.Conv2d)]
    exported = _onnx_conv_weights(str(tmp_path / 'end2end.onnx'))
    assert len(exported) == len(expected) == graph['torch_conv2d']
    assert _unpaired(expected, exported) == (0, 0)


def test_fusion_wrapper_is_installed_once():
    from mmdeploy.codebase.base.task import BaseTask
    wrapper = BaseTask.build_pytorch_model
    assert fuse_in_mmdeploy_tasks() is True
    assert BaseTask.build_pytorch_model is wrapper and wrapper.fuses_mmrep_blocks
    assert not getattr(wrapper.__wrapped__, 'fuses_mmrep_blocks', False)
