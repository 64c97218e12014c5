"""Pretrained weights by name (issue 18): timm:// names, URLs and local files, converted on the fly.

Every file is served from 127.0.0.1: a stand-in for the Hugging Face hub
(``HF_ENDPOINT`` points at it) and a plain HTTP server. The peers are the
real timm / mmpretrain models with random weights and BN statistics, saved
in their own layouts; official layouts are built as the converter tests
build them. For each family and source the loaded backbone's stage
features must equal the peer's within 1e-4 of their scale.
"""
from __future__ import annotations

import io
import os
import os.path as osp
import pickle
import re
import socket

import pytest
import timm
import torch
from fusion_check import max_rel_diff
from safetensors.torch import save as save_safetensors
from test_convert_weights import (image, mmpretrain_classifier, official_repvgg_state, randomized,
                                  repghost_features, timm_repvgg_features)
from weight_servers import FileServer, HubStandIn

import mmrep  # noqa: F401
from mmrep import hub
from mmrep.converters import auto, convert_checkpoint
from mmrep.models.backbones.repghostnet import RepGhostNet
from mmrep.models.backbones.repvgg import RepVGG
from mmrep.models.pretrained import PretrainedMismatchError
from mmrep.pretrained_init import prepare_pretrained

TOL = 1e-4


def closed_port_url() -> str:
    """An address on 127.0.0.1 where nothing listens (connection refused)."""
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
    sock.close()
    return f'http://127.0.0.1:{port}'


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    """Empty weights and hub caches per test; the hub endpoint is nowhere unless a test serves one."""
    monkeypatch.setenv('MMREP_WEIGHTS_DIR', str(tmp_path / 'weights'))
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
    monkeypatch.delenv('HF_HUB_CACHE', raising=False)
    monkeypatch.delenv('HUGGINGFACE_HUB_CACHE', raising=False)
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    monkeypatch.delenv('TRANSFORMERS_OFFLINE', raising=False)
    monkeypatch.setenv('HF_ENDPOINT', closed_port_url())
    return tmp_path


@pytest.fixture
def hub_server(monkeypatch):
    with HubStandIn() as server:
        monkeypatch.setenv('HF_ENDPOINT', server.url)
        yield server


@pytest.fixture
def file_server():
    with FileServer() as server:
        yield server


def to_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def sha8(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()[:8]


def loaded(cls, checkpoint, **kwargs):
    model = cls(init_cfg=dict(type='Pretrained', checkpoint=checkpoint), **kwargs)
    model.init_weights()
    return model.eval()


def assert_same_features(expected, got):
    assert len(expected) == len(got) == 4
    assert all(e.abs().max() > 0 for e in expected), 'a peer feature map is all zeros'
    diff = max_rel_diff(expected, got)
    assert diff <= TOL, f'features differ by {diff:.3g} of their scale'


def files_under(root) -> list:
    return sorted(osp.relpath(osp.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# ---------------------------------------------------------------- peers, served


@pytest.fixture(scope='module')
def timm_a0():
    model = randomized(timm.create_model('repvgg_a0'), seed=11)
    with torch.no_grad():
        return model, timm_repvgg_features(model, image())


@pytest.fixture(scope='module')
def timm_ghost():
    model = randomized(timm.create_model('repghostnet_050'), seed=12)
    with torch.no_grad():
        return model, repghost_features(model, image())


@pytest.fixture(scope='module')
def mmpretrain_a0():
    classifier = randomized(mmpretrain_classifier('A0'), seed=13)
    with torch.no_grad():
        return classifier, classifier.backbone(image())


# ---------------------------------------------------------------- each family and source


def test_timm_repvgg_by_name_gives_timm_features(hub_server, timm_a0):
    model, expected = timm_a0
    hub_server.add('timm/repvgg_a0.rvgg_in1k', 'model.safetensors',
                   save_safetensors(model.state_dict()))
    ours = loaded(RepVGG, 'timm://repvgg_a0.rvgg_in1k', arch='A0')
    with torch.no_grad():
        assert_same_features(expected, ours(image()))
    assert ('GET', '/timm/repvgg_a0.rvgg_in1k/resolve/main/model.safetensors') \
        in hub_server.requests


def test_timm_repghostnet_bin_when_the_repo_has_no_safetensors(hub_server, timm_ghost):
    """``model.safetensors`` first, then ``pytorch_model.bin`` (a pickle: the safe loader reads it)."""
    model, expected = timm_ghost
    hub_server.add('timm/repghostnet_050.in1k', 'pytorch_model.bin', to_bytes(model.state_dict()))
    ours = loaded(RepGhostNet, 'timm://repghostnet_050.in1k', widen_factor=0.5)
    with torch.no_grad():
        assert_same_features(expected, ours(image()))
    paths = [path for _, path in hub_server.requests]
    assert paths.index('/timm/repghostnet_050.in1k/resolve/main/model.safetensors') \
        < paths.index('/timm/repghostnet_050.in1k/resolve/main/pytorch_model.bin')


def test_mmpretrain_url_gives_mmpretrain_features(file_server, mmpretrain_a0):
    classifier, expected = mmpretrain_a0
    data = to_bytes({'meta': {'mmpretrain_version': '1.2.0'}, 'state_dict': classifier.state_dict()})
    url = file_server.add('/mmclassification/v0/repvgg/'
                          f'repvgg-A0_8xb32_in1k_20221213-{sha8(data)}.pth', data)
    ours = loaded(RepVGG, url, arch='A0')
    with torch.no_grad():
        assert_same_features(expected, ours(image()))


def test_mmpretrain_url_with_backbone_prefix_as_mmdet_configs_write_it(file_server, mmpretrain_a0):
    classifier, expected = mmpretrain_a0
    url = file_server.add('/repvgg-A0.pth', to_bytes({'state_dict': classifier.state_dict()}))
    model = RepVGG('A0', init_cfg=dict(type='Pretrained', checkpoint=url, prefix='backbone.'))
    model.init_weights()
    with torch.no_grad():
        assert_same_features(expected, model.eval()(image()))


def test_official_repvgg_url_gives_the_same_features(file_server, mmpretrain_a0):
    classifier, expected = mmpretrain_a0
    url = file_server.add('/RepVGG-A0-train.pth', to_bytes(official_repvgg_state(classifier)))
    ours = loaded(RepVGG, url, arch='A0')
    with torch.no_grad():
        assert_same_features(expected, ours(image()))


def test_deploy_form_url_loads_into_the_fused_backbone(file_server):
    classifier = randomized(mmpretrain_classifier('A0', deploy=True), seed=14)
    with torch.no_grad():
        expected = classifier.backbone(image())
    url = file_server.add('/repvgg-A0-deploy.pth', to_bytes({'state_dict': classifier.state_dict()}))
    ours = loaded(RepVGG, url, arch='A0', deploy=True)
    with torch.no_grad():
        assert_same_features(expected, ours(image()))
    with pytest.raises(PretrainedMismatchError, match='build the backbone with deploy=True'):
        loaded(RepVGG, url, arch='A0')


def test_official_repghost_release_gives_the_same_features(file_server, timm_ghost):
    """RepGhost's GitHub releases: ``state_dict`` and ``state_dict_ema`` in the official keys;
    the published accuracies are the EMA weights', which ``ema=True`` takes."""
    model, expected = timm_ghost
    state = model.state_dict()
    raw = {k: v * 0.5 if v.is_floating_point() else v for k, v in state.items()}
    url = file_server.add('/ChengpengChen/RepGhost/releases/download/RepGhost/'
                          'repghostnet_0_5x_43M_66.95.pth.tar',
                          to_bytes({'state_dict': raw, 'state_dict_ema': state, 'epoch': 300}))
    ours = RepGhostNet(0.5, init_cfg=dict(type='Pretrained', checkpoint=url, ema=True))
    ours.init_weights()
    with torch.no_grad():
        assert_same_features(expected, ours.eval()(image()))
    # without ema: the raw weights (converted and cached apart from the EMA ones)
    raw_model = loaded(RepGhostNet, url, widen_factor=0.5)
    assert torch.equal(raw_model.stem.conv.weight, raw['conv_stem.weight'])


def test_local_file_of_a_foreign_layout_converts_on_the_fly(tmp_path, timm_a0):
    model, expected = timm_a0
    path = tmp_path / 'repvgg_a0.safetensors'
    path.write_bytes(save_safetensors(model.state_dict()))
    ours = loaded(RepVGG, str(path), arch='A0')
    with torch.no_grad():
        assert_same_features(expected, ours(image()))
    # the user's folder is left as it was; the conversion is cached under MMREP_WEIGHTS_DIR
    assert sorted(os.listdir(tmp_path / 'weights' / hub.CONVERTED_DIR))
    assert [p.name for p in tmp_path.glob('repvgg_a0*')] == ['repvgg_a0.safetensors']


# RepLKNet and OREPA-ResNet use the shapes of the converter tests' small variants:
# custom archs that no ARCHS name fits, so detection finds the layout but no arch,
# and the strict load decides.

def test_mmpretrain_and_official_replknet_urls_give_mmpretrain_features(file_server):
    from test_convert_replknet import SHORT_31B, mmpretrain_replknet
    from mmrep.models.backbones.replknet import RepLKNet
    reference = mmpretrain_replknet(SHORT_31B, seed=21)
    with torch.no_grad():
        expected = reference(image())
    backbone = reference.state_dict()
    classifier = {f'backbone.{k}': v for k, v in backbone.items()}
    classifier.update({'head.fc.weight': torch.zeros(10, 1024), 'head.fc.bias': torch.zeros(10)})
    mmpretrain_url = file_server.add('/replknet-31B_in1k.pth', to_bytes({'state_dict': classifier}))
    official = dict(backbone, **{'norm.weight': torch.ones(1024), 'norm.bias': torch.zeros(1024),
                                 'norm.running_mean': torch.zeros(1024),
                                 'norm.running_var': torch.ones(1024),
                                 'head.weight': torch.zeros(10, 1024), 'head.bias': torch.zeros(10)})
    official_url = file_server.add('/RepLKNet-31B_ImageNet-1K_224.pth', to_bytes({'model': official}))
    for url in (mmpretrain_url, official_url):
        # mmpretrain's RepLKNet normalizes every output (its stage norms)
        ours = loaded(RepLKNet, url, arch='31B', layers=(1, 1, 1, 1), drop_path_rate=0.,
                      norm_intermediate_features=True)
        with torch.no_grad():
            assert_same_features(expected, ours(image()))


def test_official_orepa_url_gives_the_official_features(file_server):
    from test_convert_orepa import official_features, official_resnet
    from mmrep.models.backbones.orepa_resnet import OREPAResNet
    state, modules = official_resnet(18, width=0.25, seed=31)
    x = image()
    with torch.no_grad():
        expected = official_features(state, modules, 18, x)
    url = file_server.add('/OREPA_ResNet18.pth.tar', to_bytes({'state_dict': state}))
    ours = loaded(OREPAResNet, url, depth=18, stem_channels=16, base_channels=16)
    with torch.no_grad():
        assert_same_features(expected, ours(x))


# ---------------------------------------------------------------- the cache


def test_second_run_converts_nothing_and_downloads_nothing(hub_server, timm_a0, monkeypatch,
                                                           isolated_caches):
    model, expected = timm_a0
    hub_server.add('timm/repvgg_a0.rvgg_in1k', 'model.safetensors',
                   save_safetensors(model.state_dict()))
    loaded(RepVGG, 'timm://repvgg_a0.rvgg_in1k', arch='A0')
    repo = isolated_caches / 'hf' / 'hub' / 'models--timm--repvgg_a0.rvgg_in1k'
    converted = os.listdir(repo / hub.CONVERTED_DIR)
    assert len(converted) == 1 and converted[0].endswith(f'-c{auto.CONVERTER_VERSION}.pth')
    requests = len(hub_server.requests)

    def no_conversion(*args, **kwargs):
        raise AssertionError('converted again')

    monkeypatch.setattr(auto, 'convert_detected', no_conversion)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    ours = loaded(RepVGG, 'timm://repvgg_a0.rvgg_in1k', arch='A0')
    with torch.no_grad():
        assert_same_features(expected, ours(image()))
    assert len(hub_server.requests) == requests


def test_file_placed_by_hand_is_used_offline(timm_a0, monkeypatch, isolated_caches):
    model, expected = timm_a0
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(hub.WeightsUnavailableError) as info:
        loaded(RepVGG, 'timm://repvgg_a0.rvgg_in1k', arch='A0')
    manual = info.value.manual_path
    assert manual == str(isolated_caches / 'weights' / 'timm' / 'repvgg_a0.rvgg_in1k'
                         / 'model.safetensors')
    os.makedirs(osp.dirname(manual))
    with open(manual, 'wb') as f:
        f.write(save_safetensors(model.state_dict()))
    ours = loaded(RepVGG, 'timm://repvgg_a0.rvgg_in1k', arch='A0')
    with torch.no_grad():
        assert_same_features(expected, ours(image()))


# ---------------------------------------------------------------- failures (point 4)


def assert_point_4_error(error: hub.WeightsUnavailableError, name: str, reason: str):
    text = str(error)
    assert name in text and reason in text, text
    assert error.manual_path and error.manual_path in text
    assert 'python tools/convert_weights.py' in text and '--arch repvgg-a0' in text
    assert '--cfg-options model.backbone.init_cfg=None' in text


def test_no_network(monkeypatch):
    name = 'timm://repvgg_a0.rvgg_in1k'
    with pytest.raises(hub.WeightsUnavailableError) as info:
        loaded(RepVGG, name, arch='A0')
    assert_point_4_error(info.value, name, 'is not reachable')
    assert '--from timm' in str(info.value)


def test_hf_hub_offline_sends_no_request(hub_server, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    name = 'timm://repvgg_a0.rvgg_in1k'
    with pytest.raises(hub.WeightsUnavailableError) as info:
        loaded(RepVGG, name, arch='A0')
    assert_point_4_error(info.value, name, 'HF_HUB_OFFLINE is set')
    assert hub_server.requests == []


def test_404_on_the_hub_and_on_a_url(hub_server, file_server):
    name = 'timm://repvgg_a0.rvgg_in1k'
    with pytest.raises(hub.WeightsUnavailableError) as info:
        loaded(RepVGG, name, arch='A0')
    assert_point_4_error(info.value, name, 'has neither model.safetensors nor pytorch_model.bin')
    url = file_server.url + '/repvgg/missing.pth'
    with pytest.raises(hub.WeightsUnavailableError) as info:
        loaded(RepVGG, url, arch='A0')
    assert_point_4_error(info.value, url, 'the server answered 404')


def test_interrupted_downloads_leave_nothing_in_the_caches(hub_server, file_server,
                                                          isolated_caches):
    data = os.urandom(1 << 20)  # never loaded: the download fails first
    hub_server.truncate.add(hub_server.add('timm/repvgg_a0.rvgg_in1k', 'model.safetensors', data))
    name = 'timm://repvgg_a0.rvgg_in1k'
    with pytest.raises(hub.WeightsUnavailableError) as info:
        loaded(RepVGG, name, arch='A0')
    assert_point_4_error(info.value, name, 'download of timm/repvgg_a0.rvgg_in1k/model.safetensors')
    url_path = '/repvgg-A0-train.pth'
    file_server.truncate.add(url_path)
    url = file_server.add(url_path, data)
    with pytest.raises(hub.WeightsUnavailableError) as info:
        loaded(RepVGG, url, arch='A0')
    assert_point_4_error(info.value, url, 'the download was interrupted')
    for root in ('weights', 'hf'):
        kept = [f for f in files_under(isolated_caches / root)
                if not f.endswith(('.lock', 'CACHEDIR.TAG', '.gitignore'))]
        assert not [f for f in kept if 'blobs' in f or f.endswith(('.pth', '.part', '.incomplete'))], kept


def test_hash_mismatch_is_refused_and_nothing_kept(file_server, timm_a0, isolated_caches):
    model, _ = timm_a0
    data = to_bytes(model.state_dict())
    wrong = 'deadbeef' if sha8(data) != 'deadbeef' else 'beefdead'
    url = file_server.add(f'/repvgg-A0_in1k_20210909-{wrong}.pth', data)
    with pytest.raises(hub.WeightsUnavailableError) as info:
        loaded(RepVGG, url, arch='A0')
    assert_point_4_error(info.value, url, f'does not start with the {wrong} its name promises')
    assert not osp.exists(isolated_caches / 'weights') or \
        not [f for f in files_under(isolated_caches / 'weights') if 'repvgg' in f]
    # the right hash is accepted
    good = file_server.add(f'/repvgg-A0_in1k_20210909-{sha8(data)}.pth', data)
    loaded(RepVGG, good, arch='A0')


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_payload_checkpoint_behind_a_url_is_refused_and_never_runs(file_server, tmp_path,
                                                                   timm_a0):
    model, _ = timm_a0
    marker = tmp_path / 'payload-ran'
    state = dict(model.state_dict())
    buffer = io.BytesIO()
    torch.save({'state_dict': state, 'extra': Payload(str(marker))}, buffer)
    assert not marker.exists()
    url = file_server.add('/repvgg-A0-train.pth', buffer.getvalue())
    with pytest.raises((pickle.UnpicklingError, ValueError)) as info:
        loaded(RepVGG, url, arch='A0')
    assert re.search(r'\b(io|builtins)\.open\b', str(info.value)), str(info.value)
    assert not marker.exists(), 'the payload ran'


# ---------------------------------------------------------------- refused when the model is built


def test_timm_name_of_another_arch_is_refused_at_build_without_network():
    with pytest.raises(PretrainedMismatchError,
                       match=r'timm://repvgg_a1\.rvgg_in1k holds repvgg-a1 .* but the backbone is '
                             r'RepVGG repvgg-a0'):
        RepVGG('A0', init_cfg=dict(type='Pretrained', checkpoint='timm://repvgg_a1.rvgg_in1k'))
    with pytest.raises(PretrainedMismatchError, match='repghostnet.* but the backbone is RepVGG'):
        RepVGG('A0', init_cfg=dict(type='Pretrained', checkpoint='timm://repghostnet_100.in1k'))


def test_converted_checkpoint_of_another_arch_names_both_at_build(tmp_path, timm_a0, monkeypatch):
    """Issue 17 item 4: the file's meta names its arch; refused when the model is built."""
    model, _ = timm_a0
    src = tmp_path / 'a0.safetensors'
    src.write_bytes(save_safetensors(model.state_dict()))
    out = tmp_path / 'repvgg-a0_mmrep.pth'
    convert_checkpoint(str(src), str(out), 'timm', 'repvgg-a0')
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, 'load', lambda *a, **k: loads.append(k.get('mmap')) or real_load(*a, **k))
    with pytest.raises(PretrainedMismatchError) as info:
        RepVGG('B1', init_cfg=dict(type='Pretrained', checkpoint=str(out)))
    text = str(info.value)
    assert 'holds repvgg-a0' in text and 'its meta' in text and 'RepVGG repvgg-b1' in text
    assert loads == [True], 'the build-time check reads the file memory-mapped, once'
    with pytest.raises(PretrainedMismatchError, match='build the backbone with deploy=False'):
        RepVGG('A0', deploy=True, init_cfg=dict(type='Pretrained', checkpoint=str(out)))


def test_prepare_pretrained_fetches_and_converts_before_init(hub_server, timm_a0, monkeypatch):
    model, expected = timm_a0
    hub_server.add('timm/repvgg_a0.rvgg_in1k', 'model.safetensors',
                   save_safetensors(model.state_dict()))
    backbone = RepVGG('A0', init_cfg=dict(type='Pretrained', checkpoint='timm://repvgg_a0.rvgg_in1k'))
    wrapper = torch.nn.Sequential(backbone)
    assert prepare_pretrained(wrapper) == 1
    monkeypatch.setattr(auto, 'convert_detected', lambda *a, **k: 1 / 0)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    backbone.init_weights()
    with torch.no_grad():
        assert_same_features(expected, backbone.eval()(image()))


# ---------------------------------------------------------------- tools/train.py, as users run it


def run_train(config, cwd, env_update, *args):
    import subprocess
    import sys
    from conftest import REPO_ROOT
    env = dict(os.environ, **env_update)
    return subprocess.run([sys.executable, osp.join(REPO_ROOT, 'tools', 'train.py'), str(config),
                           *args], capture_output=True, text=True, cwd=str(cwd), env=env,
                          timeout=900)


@pytest.mark.parametrize('offline', ['no route to the hub', 'HF_HUB_OFFLINE=1'])
def test_train_shipped_config_without_the_hub_stops_with_the_point_4_error(offline, tmp_path):
    """Issue 18, done when: tools/train.py configs/retinanet_repghost_1x.py with no route
    to the hub stops with one clear error, before the data sets are built."""
    from conftest import REPO_ROOT
    env = ({'HF_ENDPOINT': closed_port_url()} if offline == 'no route to the hub'
           else {'HF_HUB_OFFLINE': '1'})
    done = run_train(osp.join(REPO_ROOT, 'configs', 'retinanet_repghost_1x.py'), tmp_path, env,
                     '--work-dir', str(tmp_path / 'work'))
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr[done.stderr.index('train.py: WeightsUnavailableError'):]
    assert 'timm://repghostnet_100.in1k' in last
    assert ('is not reachable' if offline == 'no route to the hub' else
            'HF_HUB_OFFLINE is set') in last
    assert 'weights/timm/repghostnet_100.in1k/model.safetensors' in last
    assert '--from timm --arch repghostnet-1.0x' in last
    assert '--cfg-options model.backbone.init_cfg=None' in last
    assert 'Traceback' not in done.stderr and 'instances_train2017' not in done.stderr


def test_train_starts_from_the_named_timm_weights(hub_server, tmp_path, isolated_caches):
    """The same route with a hub: tools/train.py downloads, converts and trains from them."""
    from test_training_runs import shapes_cfg
    from mmrep.datasets.shapes import make_shapes_dataset
    served = randomized(timm.create_model('repghostnet_100'), seed=41).state_dict()
    hub_server.add('timm/repghostnet_100.in1k', 'model.safetensors', save_safetensors(served))
    root = str(tmp_path / 'shapes')
    make_shapes_dataset(root, num_train=4, num_val=2, size=64)
    cfg = shapes_cfg(root + '/', tmp_path / 'work', max_iters=1)
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint='timm://repghostnet_100.in1k')
    cfg.dump(str(tmp_path / 'cfg.py'))
    done = run_train(tmp_path / 'cfg.py', tmp_path, {'HF_ENDPOINT': hub_server.url})
    assert done.returncode == 0, done.stderr[-3000:]
    assert ('GET', '/timm/repghostnet_100.in1k/resolve/main/model.safetensors') \
        in hub_server.requests
    trained = torch.load(tmp_path / 'work' / 'iter_1.pth', map_location='cpu',
                         weights_only=False)['state_dict']
    # one small SGD step from the served weights (random init would be far off)
    start, after = served['conv_stem.weight'], trained['backbone.stem.conv.weight']
    assert (after - start).abs().max() < 0.05 * start.abs().max()


# ---------------------------------------------------------------- the detection interface


def test_every_family_provides_a_detector_and_every_arch_is_told_apart():
    """Each converter family module has ``detect``; every ARCHS backbone (both forms, built on
    the meta device) is detected as itself from its keys and shapes, and arch_of names it.

    Two archs whose networks are the same after fusion (RepViT's legacy m1 / m2 and
    m0.9 / m1.1: the legacy token mixer fuses to the same depthwise conv) cannot be told
    apart in deploy form: there, the arch found must have exactly the same keys and shapes.
    """
    from mmrep.converters import FAMILY_MODULES, _family_module
    from mmrep.converters.common import build_backbone

    def shapes(cfg):
        return {k: v.shape for k, v in build_backbone(cfg).state_dict().items()}

    for key in FAMILY_MODULES:
        family = _family_module(key)
        assert callable(getattr(family, 'detect', None)), f'{family.__name__} has no detect()'
        for arch, cfg in family.ARCHS.items():
            for deploy in (False, True):
                model = build_backbone(dict(cfg, deploy=deploy))
                found = auto.detect(model.state_dict())
                assert found[:2] == (family.FAMILY, 'mmrep') and found.deploy == deploy, found
                for named in (found.arch, auto.arch_of(model)):
                    if named != arch:  # a fused twin: the same network
                        assert deploy and shapes(dict(family.ARCHS[named], deploy=True)) \
                            == shapes(dict(cfg, deploy=True)), (arch, deploy, named)
    assert auto.detect({'fc.weight': torch.empty(2, 2)}) is None
