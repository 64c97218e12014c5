"""Downstream configs inherit mmrep's in stock mmdet tools after a plain install of mmrep.

mmrep is installed here as a user would (a wheel, and the editable install
scripts/setup_env.sh makes) into a throw-away virtual environment whose other
packages come from this one. Python runs in that environment without
PYTHONPATH and without ``import mmrep``: only what the install put into
site-packages makes ``_base_ = 'mmrep::...'`` work.
"""
import json
import os
import os.path as osp
import pickle
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from conftest import REPO_ROOT, shared_data

# what `pip install` of the repository reads
PACKAGE_SOURCES = ('setup.py', 'README.md', '_mmrep_startup_hook.py', 'mmrep', 'configs')


def _run(cmd, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f'{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}'
    return result


def _user_env() -> dict:
    """The environment of a user's shell: no PYTHONPATH, one thread per process."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    return env


def _copy_sources(dst: str) -> str:
    """A copy of the package sources, so that building leaves the repository as it is."""
    ignore = shutil.ignore_patterns('__pycache__', '*.egg-info')
    os.makedirs(dst)
    for name in PACKAGE_SOURCES:
        src = osp.join(REPO_ROOT, name)
        if osp.isdir(src):
            shutil.copytree(src, osp.join(dst, name), symlinks=True, ignore=ignore)
        else:
            shutil.copy(src, dst)
    return dst


def _build_wheel(src: str, out: str, editable: bool) -> str:
    """``pip install [-e] .`` in two steps: setuptools builds the (editable) wheel, pip installs it."""
    if editable:  # the PEP 660 hook `pip install -e` calls
        _run([sys.executable, '-c', 'import sys; from setuptools import build_meta; '
              'build_meta.build_editable(sys.argv[1])', out], cwd=src, env=_user_env())
    else:
        _run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
              src, '-w', out], env=_user_env())
    (wheel,) = [f for f in os.listdir(out) if f.endswith('.whl')]
    return osp.join(out, wheel)


def _venv_with_mmrep(root: str, editable: bool) -> dict:
    """A new venv with mmrep installed from a wheel; torch, mmdet, ... are this venv's."""
    src = _copy_sources(osp.join(root, 'src'))
    wheel = _build_wheel(src, osp.join(root, 'dist'), editable)
    venv = osp.join(root, 'venv')
    _run([sys.executable, '-m', 'venv', '--without-pip', venv])
    python = osp.join(venv, 'bin', 'python')
    _run([sys.executable, '-m', 'pip', '--python', python, 'install', '-q', '--no-deps',
          '--no-index', wheel], env=_user_env())
    site = _run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                env=_user_env()).stdout.strip()
    # a path line, not a site dir: this venv's own .pth files (its mmrep) stay unread
    with open(osp.join(site, 'shared_site_packages.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    return dict(python=python, site=site, package_root=src if editable else site)


@pytest.fixture(scope='module')
def wheel_install(tmp_path_factory):
    return _venv_with_mmrep(str(tmp_path_factory.mktemp('mmrep_wheel')), editable=False)


@pytest.fixture(scope='module')
def editable_install(tmp_path_factory):
    return _venv_with_mmrep(str(tmp_path_factory.mktemp('mmrep_editable')), editable=True)


@pytest.fixture(params=['wheel_install', 'editable_install'])
def installed(request):
    return request.getfixturevalue(request.param)


def test_install_puts_the_start_up_hook_in_site_packages(installed):
    assert os.path.isfile(osp.join(installed['site'], 'mmrep-config-scope.pth'))


READ_DOWNSTREAM_CONFIG = textwrap.dedent('''
    import json, sys
    preloaded = sorted({'mmengine', 'torch', 'mmdet', 'mmrep'} & set(sys.modules))
    hooked = [type(f).__name__ for f in sys.meta_path if type(f).__name__ == 'ConfigScopeFinder']
    from mmengine.config import Config
    cfg = Config.fromfile(sys.argv[1])
    print(json.dumps(dict(preloaded=preloaded, hooked=hooked, backbone=cfg.model.backbone.type,
                          neck=cfg.model.neck.type, hooks=[h.type for h in cfg.custom_hooks],
                          mmrep=sys.modules['mmrep'].__file__,
                          finder_left=[type(f).__name__ for f in sys.meta_path
                                       if type(f).__name__ == 'ConfigScopeFinder'])))
''')


def test_downstream_config_reads_mmrep_base_without_import(installed, tmp_path):
    """The hook idles until mmengine is imported; then `mmrep::` bases resolve (two levels deep)."""
    config = tmp_path / 'my_detector.py'
    config.write_text("_base_ = 'mmrep::configs/retinanet_repghost_reppafpn_1x.py'\n"
                      'model = dict(bbox_head=dict(num_classes=3))\n')
    out = _run([installed['python'], '-c', READ_DOWNSTREAM_CONFIG, str(config)],
               cwd=str(tmp_path), env=_user_env()).stdout
    info = json.loads(out.strip().splitlines()[-1])
    assert info['preloaded'] == []  # nothing heavy imported at start-up
    assert info['hooked'] == ['ConfigScopeFinder'] and info['finder_left'] == []
    assert (info['backbone'], info['neck'], info['hooks']) == ('RepGhostNet', 'RepPAFPN',
                                                              ['RepDeployHook'])
    # mmrep came from this install (mmengine imported it to find the base)
    assert info['mmrep'].startswith(installed['package_root'] + os.sep)


DOWNSTREAM_TRAINING_CONFIG = '''
_base_ = 'mmrep::configs/retinanet_repghost_1x.py'

data_root = {data_root!r}
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(256, 192), keep_ratio=True),
    dict(type='PackDetInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 192), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
coco128 = dict(data_root=data_root, ann_file='annotations/instances_train2017.json',
               data_prefix=dict(img='train2017/'), indices=4)
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline, **coco128))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(pipeline=test_pipeline, **coco128))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_train2017.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1, val_interval=2)  # 2 iterations, no validation
default_hooks = dict(logger=dict(interval=1))
# random weights, offline (the base names ImageNet weights on the hub): keep boxes
model = dict(backbone=dict(init_cfg=None), test_cfg=dict(score_thr=0.0))
'''


def test_stock_mmdet_tools_train_and_test_downstream_config(wheel_install, tmp_path):
    """mmdet's packaged tools/train.py and tools/test.py, unchanged, on a config outside the repo.

    (The editable install resolves the same base config, see the test above.)
    """
    import mmdet
    tools = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools')
    config = tmp_path / 'project' / 'configs' / 'coco128_retinanet_repghost.py'
    config.parent.mkdir(parents=True)
    config.write_text(DOWNSTREAM_TRAINING_CONFIG.format(data_root=shared_data('coco128') + '/'))
    work = tmp_path / 'work'
    env, cwd = _user_env(), str(tmp_path / 'project')

    train = _run([wheel_install['python'], osp.join(tools, 'train.py'), str(config),
                  '--work-dir', str(work)], cwd=cwd, env=env)
    assert '[2/2]' in train.stdout + train.stderr  # Epoch(train) [1][2/2]
    checkpoint = work / 'epoch_1.pth'
    assert checkpoint.is_file()
    assert (work / 'epoch_1_fused.pth').is_file()  # RepDeployHook from mmrep's base config ran

    results = tmp_path / 'results.pkl'
    test = _run([wheel_install['python'], osp.join(tools, 'test.py'), str(config), str(checkpoint),
                 '--work-dir', str(tmp_path / 'test'), '--out', str(results)], cwd=cwd, env=env)
    assert 'coco/bbox_mAP' in test.stdout + test.stderr
    with open(results, 'rb') as f:
        detections = pickle.load(f)
    assert len(detections) == 4 and all(len(d['pred_instances']['scores']) for d in detections)
