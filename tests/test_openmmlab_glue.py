"""Registries, config inheritance from outside the repo, clear errors, and DDP training."""
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.config import Config

import mmrep
from conftest import REPO_ROOT
from mmrep.datasets.shapes import make_shapes_dataset

TYPES = ('RepVGG', 'RepGhostNet', 'OREPAResNet', 'RepLKNet', 'RepPAFPN')


def test_models_and_hook_registered_for_mmdet_and_mmseg():
    from mmdet.registry import HOOKS as DET_HOOKS, MODELS as DET_MODELS
    from mmseg.registry import HOOKS as SEG_HOOKS, MODELS as SEG_MODELS
    for name in TYPES:
        assert DET_MODELS.get(name) is SEG_MODELS.get(name) is not None
    assert DET_HOOKS.get('RepDeployHook') is SEG_HOOKS.get('RepDeployHook') is not None


def test_unknown_arch_error_lists_valid_choices():
    from mmdet.registry import MODELS
    with pytest.raises(ValueError, match="'A0'.*'B3'"):
        MODELS.build(dict(type='RepVGG', arch='A9'))
    with pytest.raises(ValueError, match='1.0'):
        MODELS.build(dict(type='RepGhostNet', widen_factor=0.7))


def test_neck_channel_mismatch_names_both_lists():
    from mmdet.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', 'retinanet_repghost_reppafpn_1x.py'))
    cfg.model.backbone = dict(type='RepVGG', arch='A0')  # 48/96/192/1280, neck expects RepGhost's
    model = MODELS.build(cfg.model).eval()
    with pytest.raises(ValueError, match=r'\[24, 40, 112, 160\].*\[48, 96, 192, 1280\]'):
        model.extract_feat(torch.rand(1, 3, 64, 64))


def test_downstream_project_inherits_mmrep_config(tmp_path):
    """A config outside the repo inherits ours with 'mmrep::' and changes classes and data."""
    project = tmp_path / 'my_project'
    project.mkdir()
    (project / 'my_detector.py').write_text(textwrap.dedent('''
        _base_ = 'mmrep::configs/retinanet_repghost_1x.py'
        model = dict(bbox_head=dict(num_classes=3))
        train_dataloader = dict(dataset=dict(data_root='/data/fruit/'))
    '''))
    script = textwrap.dedent(f'''
        import mmrep
        from mmengine.config import Config
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        register_all_modules()
        cfg = Config.fromfile({str(project / 'my_detector.py')!r})
        model = MODELS.build(cfg.model)
        print(type(model.backbone).__name__, model.bbox_head.num_classes,
              cfg.train_dataloader.dataset.data_root, cfg.custom_hooks[0]['type'])
    ''')
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ['RepGhostNet', '3', '/data/fruit/', 'RepDeployHook']


def test_config_path_helper():
    assert osp.samefile(mmrep.config_path('retinanet_repghost_1x.py'),
                        osp.join(REPO_ROOT, 'configs', 'retinanet_repghost_1x.py'))
    with pytest.raises(FileNotFoundError, match='no mmrep config'):
        mmrep.config_path('nope.py')


def test_shapes_dataset_is_deterministic(tmp_path):
    a = make_shapes_dataset(str(tmp_path / 'a'), num_train=3, num_val=2, size=64, seed=1)
    b = make_shapes_dataset(str(tmp_path / 'b'), num_train=3, num_val=2, size=64, seed=1)
    assert open(a['train']).read() == open(b['train']).read()
    assert open(tmp_path / 'a' / 'val' / 'val_0001.png', 'rb').read() == \
        open(tmp_path / 'b' / 'val' / 'val_0001.png', 'rb').read()


def test_dist_train_two_gloo_processes(tmp_path):
    data = tmp_path / 'shapes'
    make_shapes_dataset(str(data), num_train=8, num_val=2, size=128)
    env = dict(os.environ, PORT=str(29500 + os.getpid() % 1000), OMP_NUM_THREADS='1',
               PATH=osp.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
    root = str(data) + '/'
    cmd = ['bash', osp.join(REPO_ROOT, 'tools', 'dist_train.sh'),
           osp.join(REPO_ROOT, 'configs', 'retinanet_repghost_shapes_demo.py'), '2',
           '--work-dir', str(tmp_path / 'work'), '--cfg-options',
           'train_cfg.max_iters=1', 'train_cfg.val_interval=1000',
           'default_hooks.checkpoint.interval=1', 'train_dataloader.batch_size=1',
           'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
           f'train_dataloader.dataset.data_root={root}', f'val_dataloader.dataset.data_root={root}',
           f'test_dataloader.dataset.data_root={root}',
           f'val_evaluator.ann_file={root}annotations/val.json',
           f'test_evaluator.ann_file={root}annotations/val.json', 'param_scheduler=[]']
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path),
                          timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert 'Distributed training: True' in log and 'Distributed launcher: pytorch' in log, log[-2000:]
    assert osp.isfile(tmp_path / 'work' / 'iter_1.pth')
    assert osp.isfile(tmp_path / 'work' / 'iter_1_fused.pth')


@pytest.mark.parametrize('config', ['mask-rcnn_orepa-r50_fpn_1x.py', 'upernet_repvgg-a0_camvid.py',
                                    'upernet_replknet-31b_ade20k.py'])
def test_hook_and_reparameterize_tool_work_unchanged_on_other_families(config, tmp_path):
    """RepDeployHook and tools/reparameterize.py know nothing of the model family."""
    import types

    from mmengine.logging import MMLogger
    from mmengine.registry import MODELS, init_default_scope

    from fusion_check import randomize_bn
    from mmrep.engine.rep_deploy_hook import RepDeployHook
    path = osp.join(REPO_ROOT, 'configs', config)
    cfg = Config.fromfile(path)
    if 'replknet' in config:  # the full 31B is slow on CPU; the tool does not care about depth
        cfg.model.backbone.layers = [1, 1, 1, 1]
        cfg.model.backbone.norm_cfg = dict(type='BN')
        cfg.model.decode_head.norm_cfg = cfg.model.auxiliary_head.norm_cfg = dict(type='BN')
    init_default_scope(cfg.default_scope)
    model = randomize_bn(MODELS.build(cfg.model)).eval()
    ckpt = str(tmp_path / 'model.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    cfg_file = str(tmp_path / config)
    cfg.dump(cfg_file)
    done = subprocess.run([sys.executable, osp.join(REPO_ROOT, 'tools', 'reparameterize.py'),
                           cfg_file, ckpt, str(tmp_path / 'out'), '--verify'],
                          capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert osp.isfile(tmp_path / 'out' / 'model_fused.pth')
    runner = types.SimpleNamespace(model=model, hooks=[], logger=MMLogger.get_current_instance())
    assert mmrep.count_unfused(model) > 0
    RepDeployHook().before_test(runner)
    assert mmrep.count_unfused(model) == 0
