"""Every route that loads a checkpoint goes through mmrep's safe loader.

Payload checkpoints (their unpickling would create a marker file) are served
from 127.0.0.1 or written locally and named in every way a user names a
checkpoint: URLs and the schemes that resolve to them, ``init_cfg``,
``load_from``, ``tools/train.py --resume``, ``tools/test.py``, the deploy
tools. Each is refused and the marker never appears.
"""
import argparse
import os
import os.path as osp
import subprocess
import sys
import types

import pytest
import torch
from mmengine.model import BaseModel, BaseModule
from mmengine.runner import Runner
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint
from torch import nn

import mmrep  # noqa: F401
from conftest import REPO_ROOT, load_tool
from local_http import serve_directory
from mmrep import checkpoint as safe
from mmrep.checkpoint import TRUSTED_ENV, UntrustedCheckpointError
from test_checkpoint_safety import Payload

DEMO_CONFIG = osp.join(REPO_ROOT, 'configs', 'retinanet_repghost_shapes_demo.py')


def write_payload(path, marker, state_dict=None, **extra):
    torch.save(dict(state_dict=state_dict or nn.Linear(2, 2).state_dict(),
                    meta={'note': Payload(marker)}, **extra), path)
    return str(path)


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A payload and a good checkpoint over HTTP; torch hub's cache in tmp_path."""
    files = tmp_path / 'served'
    files.mkdir()
    marker = tmp_path / 'payload_ran'
    write_payload(files / 'payload.pth', marker)
    torch.save({'state_dict': nn.Linear(2, 2).state_dict()}, files / 'good.pth')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    with serve_directory(files) as url:
        yield types.SimpleNamespace(url=url, marker=marker, files=files,
                                    cache=tmp_path / 'torch_home' / 'hub' / 'checkpoints')


def test_every_mmengine_scheme_loads_through_mmrep():
    loaders = CheckpointLoader._schemes
    assert {'', 'http://', 'https://', 'torchvision://', 'open-mmlab://', 'mmcls://',
            'pavi://'} <= set(loaders)
    foreign = {prefix: loader.__module__ for prefix, loader in loaders.items()
               if loader.__module__ != 'mmrep.checkpoint'}
    assert not foreign, f'schemes that do not load through mmrep: {foreign}'
    # mmengine's own scheme functions call these module globals
    assert mmengine_checkpoint.load_url is safe.load_url
    assert mmengine_checkpoint.load_from_http.__module__ == 'mmrep.checkpoint'


def _fake_ceph(payload_bytes):
    class Backend:
        def get(self, filename):
            return payload_bytes
    return lambda filename, backend_args=None: Backend()


ROUTES = {
    'http': lambda url, mp: _load_checkpoint(f'{url}/payload.pth'),
    'mmengine load_from_http': lambda url, mp: mmengine_checkpoint.load_from_http(
        f'{url}/payload.pth'),
    'torchvision://': lambda url, mp: (
        mp.setattr(mmengine_checkpoint, 'get_torchvision_models',
                   lambda: {'resnet18': f'{url}/payload.pth'}),
        _load_checkpoint('torchvision://resnet18')),
    'open-mmlab://': lambda url, mp: (
        mp.setattr(mmengine_checkpoint, 'get_external_models',
                   lambda: {'resnet50_v1c': f'{url}/payload.pth'}),
        _load_checkpoint('open-mmlab://resnet50_v1c')),
    'openmmlab:// (mmengine function)': lambda url, mp: (
        mp.setattr(mmengine_checkpoint, 'get_external_models',
                   lambda: {'resnet50_v1c': f'{url}/payload.pth'}),
        mmengine_checkpoint.load_from_openmmlab('openmmlab://resnet50_v1c')),
    'mmcls://': lambda url, mp: (
        mp.setattr(mmengine_checkpoint, 'get_mmcls_models',
                   lambda: {'resnet50': f'{url}/payload.pth'}),
        _load_checkpoint('mmcls://resnet50')),
}


@pytest.mark.parametrize('route', list(ROUTES))
def test_url_routes_refuse_a_payload(served, route, monkeypatch):
    """Item 2: URLs and every scheme that resolves to one load as safely as a local file."""
    with pytest.raises(UntrustedCheckpointError) as err:
        ROUTES[route](served.url, monkeypatch)
    assert not served.marker.exists()
    # the opt-in names the downloaded copy, which is what can be trusted
    assert f'{TRUSTED_ENV}={served.cache / "payload.pth"}' in str(err.value)


def test_s3_route_refuses_a_payload(served, monkeypatch, tmp_path):
    import mmengine.fileio
    monkeypatch.setattr(mmengine.fileio, 'get_file_backend', _fake_ceph(
        open(write_payload(tmp_path / 'ceph.pth', served.marker), 'rb').read()))
    with pytest.raises(UntrustedCheckpointError, match='s3://bucket/ceph.pth holds'):
        _load_checkpoint('s3://bucket/ceph.pth')
    assert not served.marker.exists()


def test_good_checkpoint_over_http_loads_and_is_cached(served):
    ckpt = _load_checkpoint(f'{served.url}/good.pth', map_location='cpu')
    assert set(ckpt['state_dict']) == {'weight', 'bias'}
    assert (served.cache / 'good.pth').is_file()


def test_url_downloads_keep_only_complete_checked_files(served):
    """URLs download through mmrep.hub's downloader: a web page or a file whose sha256 does not
    start with the prefix in its name is refused, and nothing is left in the cache."""
    from mmrep.hub import DownloadError
    (served.files / 'page.pth').write_text('<!DOCTYPE html><html>sign in</html>')
    with pytest.raises(DownloadError, match='a web page, not a checkpoint'):
        safe.load_url(f'{served.url}/page.pth')
    good = (served.files / 'good.pth').read_bytes()
    (served.files / 'good-0123abcd.pth').write_bytes(good)
    with pytest.raises(DownloadError, match='does not start with the 0123abcd'):
        safe.load_url(f'{served.url}/good-0123abcd.pth', check_hash=True)
    assert not served.cache.exists() or not list(served.cache.iterdir())
    import hashlib
    prefix = hashlib.sha256(good).hexdigest()[:8]
    (served.files / f'good-{prefix}.pth').write_bytes(good)
    ckpt = safe.load_url(f'{served.url}/good-{prefix}.pth', check_hash=True)
    assert set(ckpt['state_dict']) == {'weight', 'bias'}


def test_a_downloaded_copy_can_be_trusted(served, monkeypatch):
    with pytest.raises(UntrustedCheckpointError):
        _load_checkpoint(f'{served.url}/payload.pth')
    monkeypatch.setenv(TRUSTED_ENV, str(served.cache / 'payload.pth'))
    with pytest.warns(UserWarning, match='full unpickling'):
        _load_checkpoint(f'{served.url}/payload.pth')
    assert served.marker.exists()  # asked for explicitly


class TinyNet(BaseModule):
    def __init__(self, init_cfg=None):
        super().__init__(init_cfg)
        self.fc = nn.Linear(2, 2)


def test_init_cfg_pretrained_url_is_refused(served):
    """The issue's reproduction: init_cfg=dict(type='Pretrained', checkpoint='http://...')."""
    from mmrep.models.backbones.repghostnet import RepGhostNet
    url = f'{served.url}/payload.pth'
    with pytest.raises(UntrustedCheckpointError):
        TinyNet(init_cfg=dict(type='Pretrained', checkpoint=url)).init_weights()
    with pytest.raises(UntrustedCheckpointError):  # mmrep's strict Pretrained loading too
        RepGhostNet(widen_factor=0.5, init_cfg=dict(type='Pretrained', checkpoint=url)
                    ).init_weights()
    assert not served.marker.exists()
    net = TinyNet(init_cfg=dict(type='Pretrained', checkpoint=f'{served.url}/good.pth'))
    net.init_weights()  # a good URL still loads


class TinyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, inputs=None, data_samples=None, mode='tensor'):
        return self.fc(inputs)


def test_runner_load_from_url_is_refused(served, tmp_path):
    runner = Runner(model=TinyModel(), work_dir=str(tmp_path / 'work'),
                    load_from=f'{served.url}/payload.pth', experiment_name='load_from_url')
    with pytest.raises(UntrustedCheckpointError):
        runner.load_or_resume()
    assert not served.marker.exists()


@pytest.fixture(scope='module')
def shapes_run(tmp_path_factory):
    """A real checkpoint of tools/train.py's config after one iteration (shapes data, 64 px)."""
    from test_training_runs import shapes_cfg

    from mmrep.datasets.shapes import make_shapes_dataset
    root = str(tmp_path_factory.mktemp('shapes'))
    make_shapes_dataset(root, num_train=4, num_val=2, size=64)
    work = tmp_path_factory.mktemp('first')
    cfg = shapes_cfg(root + '/', work, max_iters=1)
    Runner.from_cfg(cfg).train()
    return types.SimpleNamespace(cfg=cfg, root=root + '/', ckpt=osp.join(str(work), 'iter_1.pth'))


def test_resume_does_not_run_code_from_meta_config(shapes_run, tmp_path):
    """Item 1: a file of tensors and strings only, whose meta['config'] mmengine's
    Runner.resume passes to Config.fromstring (which executes it), via tools/train.py --resume."""
    marker = tmp_path / 'resume_payload_ran'
    ckpt = torch.load(shapes_run.ckpt, map_location='cpu', weights_only=False)
    ckpt['meta']['config'] = f"__import__('os').system('touch {marker}')\ngpu_ids = [0]\n"
    evil = tmp_path / 'evil.pth'
    torch.save(ckpt, evil)
    cfg = shapes_run.cfg.copy()
    cfg.train_cfg.max_iters = 2
    cfg.work_dir = str(tmp_path / 'resumed')
    cfg_path = tmp_path / 'train_cfg.py'
    cfg.dump(str(cfg_path))
    done = subprocess.run(
        [sys.executable, osp.join(REPO_ROOT, 'tools', 'train.py'), str(cfg_path),
         '--resume', str(evil)], capture_output=True, text=True, cwd=str(tmp_path),
        timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not marker.exists(), 'meta["config"] of the checkpoint was executed'
    assert "dropped meta['config']" in done.stderr
    assert osp.isfile(tmp_path / 'resumed' / 'iter_2.pth')  # and training went on


@pytest.fixture
def demo_payload(tmp_path):
    """A payload with the demo detector's real weights (it would load, were it trusted)."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('mmdet')
    model = MODELS.build(Config.fromfile(DEMO_CONFIG).model)
    marker = tmp_path / 'tool_payload_ran'
    return write_payload(tmp_path / 'trained.pth', marker, model.state_dict()), marker


def test_test_and_reparameterize_tools_refuse_a_payload(demo_payload, tmp_path, monkeypatch):
    path, marker = demo_payload
    monkeypatch.setattr(sys, 'argv', ['tools/test.py', DEMO_CONFIG, path,
                                      '--work-dir', str(tmp_path / 'test')])
    with pytest.raises(SystemExit, match='tools/test.py: .* holds objects .* refuses'):
        load_tool('test').main()
    args = argparse.Namespace(config=DEMO_CONFIG, checkpoint=path, out_dir=str(tmp_path / 'out'),
                              force=False, verify=False, cfg_options=None)
    with pytest.raises(SystemExit, match='tools/reparameterize.py: .* holds objects .* refuses'):
        load_tool('reparameterize').main(args)
    assert not marker.exists() and not (tmp_path / 'out').exists()


def test_deploy_tool_refuses_a_payload(demo_payload, tmp_path):
    pytest.importorskip('mmdeploy')
    path, marker = demo_payload
    deploy_cfg = osp.join(REPO_ROOT, 'configs', 'deploy', 'detection_onnxruntime_static.py')
    with pytest.raises(UntrustedCheckpointError):
        load_tool('deploy').main([deploy_cfg, DEMO_CONFIG, path, 'no_image_needed.jpg',
                              '--work-dir', str(tmp_path / 'deploy')])
    assert not marker.exists()
    assert not osp.exists(tmp_path / 'deploy' / 'fused.pth')


def _bytes_read() -> int:
    with open('/proc/self/io') as f:  # rchar: bytes this process read through read() calls
        return int(next(line for line in f if line.startswith('rchar:')).split()[1])


def test_read_meta_does_not_read_the_tensors(tmp_path):
    """Item 19: RepDeployHook reads the meta of the last checkpoint after every training run;
    the weights and optimizer state are memory-mapped, never read (nor held) for it."""
    from mmrep.engine.deploy_utils import read_meta
    path = tmp_path / 'big.pth'
    torch.save({'meta': {'epoch': 3, 'dataset_meta': {'classes': ('a',)}},
                'state_dict': {'w': torch.ones(1)},
                'optimizer': {'state': {0: {'exp_avg': torch.ones(4 * 2 ** 20)}}}}, path)
    before = _bytes_read()
    meta = read_meta(str(path))
    read = _bytes_read() - before
    assert meta == {'epoch': 3, 'dataset_meta': {'classes': ('a',)}}
    assert read < 2 ** 20, f'read_meta read {read} bytes of a {path.stat().st_size} byte file'
