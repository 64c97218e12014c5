"""The RepVGG-A0 configs take their backbone from configs/_base_/models/repvgg-a0.py."""
import os.path as osp

import pytest
from mmengine.config import Config

import mmrep
from conftest import REPO_ROOT
from mmrep.models.backbones.repvgg import RepVGG

BASE = osp.join(REPO_ROOT, 'configs', '_base_', 'models', 'repvgg-a0.py')
# config -> (backbone keys it overrides, where the stage channels go)
USERS = {
    'retinanet_repvgg-a0_1x': ({}, lambda m: m.neck.in_channels),
    'mask-rcnn_repvgg-a0_reppafpn_1x': ({}, lambda m: m.neck.in_channels),
    'yolox-style_repvgg-a0_reppafpn': (dict(out_indices=(1, 2, 3)), lambda m: m.neck.in_channels),
    'upernet_repvgg-a0_camvid': ({}, lambda m: m.decode_head.in_channels),
}


def test_base_channels_are_repvgg_a0s():
    base = Config.fromfile(BASE)
    assert base.repvgg_a0_channels == RepVGG('A0').out_channels
    assert base.repvgg_a0_backbone.type == 'RepVGG' and base.repvgg_a0_backbone.arch == 'A0'


@pytest.mark.parametrize('name', sorted(USERS))
def test_config_backbone_is_the_base_one(name):
    base = Config.fromfile(BASE)
    overrides, channels_of = USERS[name]
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', f'{name}.py'))
    assert cfg.model.backbone.to_dict() == dict(base.repvgg_a0_backbone.to_dict(), **overrides)
    wanted = [base.repvgg_a0_channels[i] for i in cfg.model.backbone.out_indices]
    assert list(channels_of(cfg.model)) == wanted


def test_base_resolves_through_the_mmrep_scope():
    cfg = Config.fromfile(mmrep.config_path('retinanet_repvgg-a0_1x.py'))
    assert cfg.model.backbone.arch == 'A0'
