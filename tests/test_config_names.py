"""Every config argument of mmrep's tools takes mmrep:: (and mmdet::) names (issue 17, item 5)."""
import argparse
import os.path as osp

import pytest

from conftest import REPO_ROOT

from mmrep.engine import cli


@pytest.mark.parametrize('name, relative', [
    ('mmrep::configs/retinanet_repvgg-a0_1x.py', 'configs/retinanet_repvgg-a0_1x.py'),
    ('mmrep::configs/deploy/detection_onnxruntime_static.py',
     'configs/deploy/detection_onnxruntime_static.py'),
    ('mmrep::configs/upernet_repvgg-a0_camvid.py', 'configs/upernet_repvgg-a0_camvid.py'),
])
def test_mmrep_names_resolve_to_the_shipped_files(tmp_path, monkeypatch, name, relative):
    monkeypatch.chdir(tmp_path)  # a project folder outside the repository
    path = cli.config_path(name)
    assert osp.samefile(path, osp.join(REPO_ROOT, relative))


def test_other_packages_and_plain_paths(tmp_path, monkeypatch):
    pytest.importorskip('mmdet')
    monkeypatch.chdir(tmp_path)
    assert cli.config_path('mmdet::retinanet/retinanet_r18_fpn_1x_coco.py').endswith(
        osp.join('mmdet', '.mim', 'configs', 'retinanet', 'retinanet_r18_fpn_1x_coco.py'))
    own = tmp_path / 'my_cfg.py'
    own.write_text("_base_ = 'mmrep::configs/retinanet_repvgg-a0_1x.py'\n")
    assert cli.config_path('my_cfg.py') == 'my_cfg.py'


@pytest.mark.parametrize('name, message', [
    ('mmrep::configs/no_such_config.py', r'config mmrep::configs/no_such_config.py: .*does not '
                                         r'exist.*mmrep::configs/deploy/'),
    ('configs/no_such_config.py', 'config file configs/no_such_config.py does not exist'),
    ('::configs/x.py', 'config ::configs/x.py'),
])
def test_unknown_names_say_what_is_wrong(tmp_path, monkeypatch, name, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=message):
        cli.config_path(name)


def test_train_and_test_tools_read_mmrep_names(tmp_path, monkeypatch):
    """tools/train.py and tools/test.py build their config with cli.load_config."""
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(config='mmrep::configs/retinanet_repvgg-a0_1x.py', launcher='none',
                              cfg_options=None, work_dir=None)
    cfg = cli.load_config(args)
    assert cfg.model.backbone.type == 'RepVGG'
    assert cfg.work_dir == osp.join('./work_dirs', 'retinanet_repvgg-a0_1x')
