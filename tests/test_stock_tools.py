"""Downstream configs inherit mmrep's in stock mmdet / mmseg tools after a plain install of mmrep.

mmrep is installed here as a user would (a wheel, and the editable install
scripts/setup_env.sh makes) into a throw-away virtual environment whose other
packages come from this one. Python runs in that environment without
PYTHONPATH and without ``import mmrep``: only what the install put into
site-packages makes ``_base_ = 'mmrep::...'`` work.

The second half runs docs/en/user_guides/own_project.md: its configs and
commands, read out of the page, in a project folder outside the repository,
on real data (the nuts photos in COCO format, CamVid).
"""
import json
import os
import os.path as osp
import pickle
import shlex
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from conftest import REPO_ROOT, shared_data
from own_project_page import (CAMVID_CLASSES, FORBIDDEN_OUTPUT, NUTS_CLASSES, page_command,
                              page_commands, page_file, page_line, with_base)

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
    # ...except setuptools' distutils shim: Python >= 3.12 has no distutils, and mmengine's
    # collect_env (every Runner) imports it, as it does in the environment the user has
    # (.pth files are read in name order: after the path line, which makes _distutils_hack
    # importable)
    shim = osp.join(sysconfig.get_paths()['purelib'], 'distutils-precedence.pth')
    if osp.isfile(shim):
        shutil.copy(shim, osp.join(site, 'zz-distutils-precedence.pth'))
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


# ---------------------------------------------------------------------------
# docs/en/user_guides/own_project.md, run as a user would. The configs and
# commands come out of the page (PAGE); the test adds only the data and options
# that make the runs small.

def assert_quiet(output: str) -> None:
    for text in FORBIDDEN_OUTPUT:
        assert text not in output, f'{text!r} in the output:\n{output[-3000:]}'


def _nuts_annotations(root: str) -> None:
    """The nuts set split as a user's project has it: 14 training images, 4 validation images."""
    import json as _json
    with open(osp.join(shared_data('nuts'), 'trainval.json')) as f:
        coco = _json.load(f)
    ids = sorted(image['id'] for image in coco['images'])
    os.makedirs(osp.join(root, 'annotations'))
    for split, keep in (('train', set(ids[:14])), ('val', set(ids[14:]))):
        part = dict(coco, images=[i for i in coco['images'] if i['id'] in keep],
                    annotations=[a for a in coco['annotations'] if a['image_id'] in keep])
        with open(osp.join(root, 'annotations', f'{split}.json'), 'w') as f:
            _json.dump(part, f)


def _ade_layout(root: str) -> None:
    """Three CamVid pictures in ADE20K's layout (jpg images, png label maps)."""
    from PIL import Image
    camvid = shared_data('camvid')
    for split, names in (('training', sorted(os.listdir(osp.join(camvid, 'train')))[:2]),
                         ('validation', sorted(os.listdir(osp.join(camvid, 'val')))[:1])):
        source = 'train' if split == 'training' else 'val'
        for kind in ('images', 'annotations'):
            os.makedirs(osp.join(root, kind, split))
        for name in names:
            stem = osp.splitext(name)[0]
            Image.open(osp.join(camvid, source, name)).convert('RGB').save(
                osp.join(root, 'images', split, stem + '.jpg'))
            shutil.copy(osp.join(camvid, source + 'annot', name),
                        osp.join(root, 'annotations', split, stem + '.png'))


def _pretrained_repvgg_a0(project: str) -> str:
    """pretrained/repvgg-a0.pth made as the docs say: timm weights through tools/convert_weights.py.

    Returns the backbone config the converter prints.
    """
    import timm
    import torch
    torch.manual_seed(0)
    model = timm.create_model('repvgg_a0')
    for module in model.modules():  # BN statistics that are not the defaults
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    src = osp.join(project, 'timm_repvgg_a0.pth')
    torch.save(model.state_dict(), src)
    done = _run([sys.executable, osp.join(REPO_ROOT, 'tools', 'convert_weights.py'), src,
                 'pretrained/repvgg-a0.pth', '--from', 'timm', '--arch', 'repvgg-a0'],
                cwd=project, env=_user_env())
    printed = [line.strip() for line in done.stdout.splitlines()
               if line.strip().startswith('backbone=dict(')]
    assert printed, done.stdout
    return printed[-1]


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    """A user's project folder: the page's configs, its data sets, converted weights."""
    root = str(tmp_path_factory.mktemp('my_project'))
    os.makedirs(osp.join(root, 'configs'))
    os.makedirs(osp.join(root, 'data', 'nuts'))
    os.symlink(osp.join(shared_data('nuts'), 'images'), osp.join(root, 'data', 'nuts', 'images'))
    _nuts_annotations(osp.join(root, 'data', 'nuts'))
    os.symlink(shared_data('camvid'), osp.join(root, 'data', 'camvid'))
    _ade_layout(osp.join(root, 'data', 'ade'))
    for name in ('nuts_retinanet_repvgg-a0.py', 'nuts_yolox-style_repvgg-a0.py',
                 'nuts_retinanet_repvgg-a0_pretrained.py', 'camvid_upernet_repvgg-a0.py'):
        text = page_file(f'configs/{name}')
        with open(osp.join(root, 'configs', name), 'w') as f:
            f.write(text)
    printed_backbone = _pretrained_repvgg_a0(root)
    return dict(root=root, printed_backbone=printed_backbone)


def write_config(project: dict, name: str, text: str) -> str:
    path = osp.join(project['root'], 'configs', name)
    with open(path, 'w') as f:
        f.write(text)
    return path


def test_page_configs_build_every_component_from_the_right_host(project):
    """A child of each config family builds model, hooks, loops, data sets, transforms, samplers,
    evaluators, optimizer and schedulers as the stock tools do, each from the host that
    registers its name (mmdet for detection, mmseg for segmentation), with no scope warning.
    """
    from mmdet.registry import TRANSFORMS as MMDET_TRANSFORMS
    from mmseg.registry import TRANSFORMS as MMSEG_TRANSFORMS
    # the hosts really differ in names the configs use, so the class check below can fail
    assert MMDET_TRANSFORMS.get('LoadAnnotations') is not MMSEG_TRANSFORMS.get('LoadAnnotations')

    detection = page_file('configs/nuts_retinanet_repvgg-a0.py')
    retinanet_line = page_line('# RetinaNet configs')
    mask_rcnn_line = page_line('# Mask R-CNN configs')
    assert retinanet_line in detection
    configs = {
        'pretrained': 'configs/nuts_retinanet_repvgg-a0_pretrained.py',
        'printed': write_config(project, 'nuts_printed_weights.py', '\n'.join([
            "_base_ = './nuts_retinanet_repvgg-a0.py'",
            f"model = dict({project['printed_backbone']})"])),
        'mask-rcnn': write_config(project, 'nuts_mask-rcnn.py', with_base(
            detection, 'mask-rcnn_repvgg-a0_reppafpn_1x.py').replace(retinanet_line,
                                                                   mask_rcnn_line)),
        'shapes-demo': write_config(project, 'nuts_shapes_demo.py', with_base(
            detection, 'retinanet_repghost_shapes_demo.py')),
        'yolox-style': 'configs/nuts_yolox-style_repvgg-a0.py',
        'camvid': 'configs/camvid_upernet_repvgg-a0.py',
        'ade20k': write_config(project, 'ade_upernet_replknet.py', with_base(
            page_file('configs/camvid_upernet_repvgg-a0.py'),
            'upernet_replknet-31b_ade20k.py').replace("'data/camvid/'", "'data/ade/'")),
    }
    out = osp.join(project['root'], 'built.json')
    done = _run([sys.executable, osp.join(REPO_ROOT, 'tests', 'build_downstream_configs.py'), out]
                + list(configs.values()), cwd=project['root'], env=_user_env())
    assert_quiet(done.stdout + done.stderr)
    with open(out) as f:
        built = dict(zip(configs, json.load(f)))

    for name, result in built.items():
        assert result['mmrep'].startswith(REPO_ROOT + os.sep), result['mmrep']
        assert result['scope'] == ('mmseg' if name in ('camvid', 'ade20k') else 'mmdet'), name
        for component in result['components']:
            assert component['host'] is not None and component['built'] == component['host'], \
                (name, component)
        registries = {c['registry'] for c in result['components']}
        assert {'DATASETS', 'TRANSFORMS', 'DATA_SAMPLERS', 'METRICS', 'HOOKS'} <= registries, name
        assert result['samples']['train'] == ['data_samples', 'inputs'], name
    for name in ('pretrained', 'printed', 'mask-rcnn', 'shapes-demo', 'yolox-style'):
        assert tuple(built[name]['classes']) == NUTS_CLASSES, name
    assert len(built['camvid']['classes']) == CAMVID_CLASSES
    assert built['mask-rcnn']['model'] == 'MaskRCNN' and built['yolox-style']['model'] == 'YOLOX'
    assert built['ade20k']['backbone'] == 'RepLKNet'

    # what mmrep's own configs define is built in the mmrep scope, from the host
    def scoped(name, registry):
        return {c['type']: c['built'] for c in built[name]['components']
                if c['registry'] == registry and c['scope'] == 'mmrep'}
    camvid_transforms = scoped('camvid', 'TRANSFORMS')
    assert camvid_transforms['LoadAnnotations'].startswith('mmseg.')
    assert camvid_transforms['Resize'].startswith('mmseg.')
    assert scoped('camvid', 'DATASETS') == {'BaseSegDataset': 'mmseg.datasets.basesegdataset.BaseSegDataset'}
    assert scoped('camvid', 'METRICS')['IoUMetric'].startswith('mmseg.')
    assert scoped('yolox-style', 'HOOKS')['YOLOXModeSwitchHook'].startswith('mmdet.')
    assert scoped('shapes-demo', 'PARAM_SCHEDULERS')
    assert scoped('ade20k', 'OPTIM_WRAPPERS')
    for name in built:
        assert scoped(name, 'HOOKS')['RepDeployHook'] == \
            'mmrep.engine.rep_deploy_hook.RepDeployHook', name

    # the weights override, as the page writes it and as the converter prints it, loads the file
    for name in ('pretrained', 'printed'):
        assert built[name]['init_cfg'] == dict(type='Pretrained',
                                               checkpoint='pretrained/repvgg-a0.pth'), name
        assert built[name]['pretrained_max_diff'] == 0.0, name
    assert built['mask-rcnn']['pretrained_max_diff'] is None


SMALL_DETECTION_RUN = [
    'train_cfg.max_epochs=1', 'train_dataloader.dataset.indices=2',
    'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
    'train_dataloader.dataset.pipeline.2.scale=(320,240)',
    'val_dataloader.dataset.indices=2', 'val_dataloader.num_workers=0',
    'val_dataloader.persistent_workers=False', 'val_dataloader.dataset.pipeline.1.scale=(320,240)',
    'model.test_cfg.score_thr=0.0',  # random head: keep boxes
    'default_hooks.logger.interval=1',
]
SMALL_DETECTION_TEST = [
    'test_dataloader.dataset.indices=2', 'test_dataloader.num_workers=0',
    'test_dataloader.persistent_workers=False',
    'test_dataloader.dataset.pipeline.1.scale=(320,240)', 'model.test_cfg.score_thr=0.0',
]


def run_page_command(install: dict, cwd: str, tool_dir_variable: str, command: str,
                     extra: list, expect_failure: bool = False) -> subprocess.CompletedProcess:
    """``command`` as the page writes it, in bash, with the install's ``python`` first on PATH."""
    setter, _ = page_commands(tool_dir_variable)
    env = _user_env()
    env['PATH'] = osp.dirname(install['python']) + os.pathsep + env['PATH']
    script = f'{setter}\n{command} ' + ' '.join(shlex.quote(a) for a in extra)
    result = subprocess.run(['bash', '-c', script], capture_output=True, text=True, cwd=cwd,
                            env=env)
    if expect_failure:
        assert result.returncode != 0, f'{command} did not fail:\n{result.stdout[-2000:]}'
    else:
        assert result.returncode == 0, \
            f'{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}'
    return result


def test_stock_mmdet_tools_train_and_test_downstream_config(wheel_install, project):
    """The page's detection commands, with mmdet's packaged tools/train.py and tools/test.py.

    Training takes the weights from the command line (dotted --cfg-options) with a
    learning rate of 0, so that the saved backbone must equal the converted file.
    """
    import torch
    root = project['root']
    work = osp.join(root, 'work_dirs', 'nuts_retinanet_repvgg-a0')
    train = page_command('MMDET_TOOLS', r'train\.py .*init_cfg')
    assert train.startswith(page_command('MMDET_TOOLS', r'train\.py [^ ]+$'))
    done = run_page_command(wheel_install, root, 'MMDET_TOOLS', train,
                            ['--cfg-options'] + SMALL_DETECTION_RUN
                            + ['optim_wrapper.optimizer.lr=0.0'])
    output = done.stdout + done.stderr
    assert_quiet(output)
    assert 'Epoch(train) [1][1/1]' in output
    for name in ('epoch_1.pth', 'epoch_1_fused.pth', 'nuts_retinanet_repvgg-a0_fused.py'):
        assert osp.isfile(osp.join(work, name)), name  # RepDeployHook of mmrep's base ran
    trained = torch.load(osp.join(work, 'epoch_1.pth'), map_location='cpu', weights_only=False)
    pretrained = torch.load(osp.join(root, 'pretrained', 'repvgg-a0.pth'), map_location='cpu')
    assert tuple(trained['meta']['dataset_meta']['classes']) == NUTS_CLASSES
    weights = {k: v for k, v in pretrained['state_dict'].items()
               if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))}
    assert len(weights) > 100
    for key, value in weights.items():
        assert torch.equal(trained['state_dict'][f'backbone.{key}'], value), key

    results = osp.join(root, 'results.pkl')
    test = page_command('MMDET_TOOLS', r'test\.py configs/.*epoch_12\.pth$')
    done = run_page_command(wheel_install, root, 'MMDET_TOOLS', test.replace('epoch_12', 'epoch_1'),
                            ['--out', results, '--cfg-options'] + SMALL_DETECTION_TEST)
    assert_quiet(done.stdout + done.stderr)
    assert 'coco/bbox_mAP' in done.stdout + done.stderr
    assert 'RepDeployHook: model fused for testing' in done.stdout + done.stderr
    with open(results, 'rb') as f:
        detections = pickle.load(f)
    assert len(detections) == 2 and all(len(d['pred_instances']['scores']) for d in detections)

    # the fused checkpoint: with its fused config it tests; with the training config, refused
    fused = page_command('MMDET_TOOLS', r'test\.py work_dirs/.*_fused\.py ')
    done = run_page_command(wheel_install, root, 'MMDET_TOOLS', fused.replace('epoch_12', 'epoch_1'),
                            ['--cfg-options'] + SMALL_DETECTION_TEST)
    assert 'coco/bbox_mAP' in done.stdout + done.stderr
    refused = page_command('MMDET_TOOLS', r'test\.py configs/.*epoch_12_fused\.pth')
    done = run_page_command(wheel_install, root, 'MMDET_TOOLS',
                            refused.replace('epoch_12', 'epoch_1'),
                            ['--cfg-options'] + SMALL_DETECTION_TEST, expect_failure=True)
    assert 'CheckpointMismatchError' in done.stderr and 'is already fused' in done.stderr
    assert 'nuts_retinanet_repvgg-a0_fused.py' in done.stderr  # names the config to use
    assert 'coco/bbox_mAP' not in done.stdout + done.stderr


def test_stock_mmseg_tools_train_downstream_config(wheel_install, project):
    """The page's segmentation command: mmseg's packaged tools/train.py, one iteration, one
    validation image."""
    root = project['root']
    command = page_command('MMSEG_TOOLS', r'train\.py configs/camvid')
    done = run_page_command(wheel_install, root, 'MMSEG_TOOLS', command, [
        '--cfg-options', 'train_cfg.max_iters=1', 'train_cfg.val_interval=10',
        'train_dataloader.batch_size=2', 'train_dataloader.dataset.indices=2',
        'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
        'val_dataloader.dataset.indices=1', 'val_dataloader.dataset.pipeline.1.scale=(240,180)',
        'train_dataloader.dataset.pipeline.2.scale=(240,180)',
        'train_dataloader.dataset.pipeline.3.crop_size=(128,128)',
        'model.data_preprocessor.size=(128,128)', 'default_hooks.logger.interval=1',
        'model.backbone.init_cfg=None'])  # offline: the config may name weights on a hub
    output = done.stdout + done.stderr
    assert_quiet(output)
    assert 'Iter(train) [1/1]' in output
    assert 'mIoU' in output  # the loop validates after its last iteration: mmseg's IoUMetric
    work = osp.join(root, 'work_dirs', 'camvid_upernet_repvgg-a0')
    assert osp.isfile(osp.join(work, 'iter_1.pth'))
    assert osp.isfile(osp.join(work, 'iter_1_fused.pth'))


def test_pkg_resources_warning_filter_is_narrow(wheel_install, tmp_path):
    """mmengine's pkg_resources warnings are gone; a program's own import still warns."""
    config = tmp_path / 'child.py'
    config.write_text("_base_ = 'mmrep::configs/retinanet_repvgg-a0_1x.py'\n")
    code = 'import sys; from mmengine.config import Config; Config.fromfile(sys.argv[1])'
    done = _run([wheel_install['python'], '-c', code, str(config)], cwd=str(tmp_path),
                env=_user_env())
    assert 'pkg_resources is deprecated' not in done.stderr  # mmengine imports and reloads it
    # the filter is in place (mmengine.config imported), yet a program's own import warns
    own = _run([wheel_install['python'], '-c', 'import mmengine.config; import pkg_resources'],
               cwd=str(tmp_path), env=_user_env())
    assert 'pkg_resources is deprecated' in own.stderr


def test_moved_editable_checkout_leaves_python_starts_quiet(tmp_path):
    """Item 17 of issue 16: after an editable install's checkout moved away, every Python
    start in that environment printed 'Error processing line 1 of mmrep-config-scope.pth'
    and a traceback. The line now does nothing when the hook cannot be found."""
    install = _venv_with_mmrep(str(tmp_path / 'install'), editable=True)
    probe = ['-c', 'import sys; print([type(f).__name__ for f in sys.meta_path '
                   'if type(f).__name__ == "ConfigScopeFinder"])']
    before = _run([install['python']] + probe, env=_user_env(), cwd=str(tmp_path))
    assert before.stdout.strip() == "['ConfigScopeFinder']" and not before.stderr
    shutil.move(install['package_root'], str(tmp_path / 'moved'))
    after = _run([install['python']] + probe, env=_user_env(), cwd=str(tmp_path))
    assert after.stdout.strip() == '[]'
    assert after.stderr == '', after.stderr
