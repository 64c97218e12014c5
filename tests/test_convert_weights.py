"""Pretrained weights: RepVGG and RepGhostNet checkpoints of the official repos, timm and
mmpretrain convert into mmrep backbones with the peers' features, and wrong ones are refused.

The peers are the real models built by timm and mmpretrain (test extras), given
random weights and BN statistics and saved in their own layouts. The official
repos are not packages: their checkpoints are built here with the official key
names and shapes (DingXiaoH/RepVGG ``repvgg.py``, ChengpengChen/RepGhost
``model/repghost.py``), checked against the official naming patterns below.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import re

import pytest
import timm
import torch
from fusion_check import count_bn, max_rel_diff, randomize_bn
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS
from timm.utils.model import reparameterize_model as timm_reparameterize
from torch import nn

import mmrep  # noqa: F401
from mmrep.checkpoint import UntrustedCheckpointError
from mmrep.converters import (FAMILY_MODULES, ConversionError, convert_checkpoint, find_family,
                              load_source)
from mmrep.converters import repghostnet as repghost_converter
from mmrep.converters import repvgg as repvgg_converter
from mmrep.converters.common import (check_against_backbone, rename_parts, unwrap_checkpoint)
from mmrep.models.backbones.repghostnet import RepGhostNet
from mmrep.models.backbones.repvgg import RepVGG
from mmrep.models.pretrained import PretrainedMismatchError

TOL = 1e-4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def image(h=64, w=96, seed=0):
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """Random BN statistics and affine parameters, and conv weights drawn from ``seed``."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
                if m.bias is not None:
                    m.bias.normal_(0, 0.1)
    return randomize_bn(model, seed).eval()


def assert_same_features(expected, got):
    assert len(expected) == len(got) == 4
    assert all(e.abs().max() > 0 for e in expected), 'a peer feature map is all zeros'
    diff = max_rel_diff(expected, got)
    assert diff <= TOL, f'features differ by {diff:.3g} of their scale'


def cli_main(argv):
    spec = importlib.util.spec_from_file_location(
        'convert_weights', os.path.join(ROOT, 'tools', 'convert_weights.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def pretrained(cls, path, **kwargs):
    """An mmrep backbone initialised through ``init_cfg=dict(type='Pretrained', ...)``."""
    model = cls(init_cfg=dict(type='Pretrained', checkpoint=str(path)), **kwargs)
    model.init_weights()
    return model.eval()


# ---------------------------------------------------------------- peers


def timm_repvgg_features(model, x):
    """timm RepVGG at the ends of its four stages (after its stem), as mmrep taps them."""
    x = model.stem(x)
    outs = []
    for stage in model.stages:
        x = stage(x)
        outs.append(x)
    return outs


def repghost_features(model, x):
    """Official / timm RepGhostNet at the ends of ``blocks.2/4/6/8`` (strides 4/8/16/32).

    timm's ``feature_info`` taps the first block of each group instead; these are
    the points mmrep's stages end at.
    """
    x = model.act1(model.bn1(model.conv_stem(x)))
    outs = []
    for i, group in enumerate(model.blocks[:9]):
        x = group(x)
        if i in (2, 4, 6, 8):
            outs.append(x)
    return outs


def mmpretrain_classifier(arch: str, deploy: bool = False):
    """An mmpretrain ImageClassifier with a RepVGG backbone, built by mmpretrain's registry."""
    init_default_scope('mmpretrain')
    try:
        model = MMPRETRAIN_MODELS.build(dict(
            type='ImageClassifier',
            backbone=dict(type='RepVGG', arch=arch, out_indices=(0, 1, 2, 3), deploy=deploy),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=10,
                      in_channels=int(512 * RepVGG.arch_settings[arch]['width_factor'][3]))))
    finally:
        init_default_scope('mmdet')
    return model


# The official names, from DingXiaoH/RepVGG repvgg.py (RepVGG, RepVGGBlock, conv_bn,
# se_block.SEBlock) and ChengpengChen/RepGhost model/repghost.py (RepGhostNet,
# RepGhostBottleneck, RepGhostModule, SqueezeExcite, ConvBnAct).
_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
OFFICIAL_REPVGG_KEY = re.compile(
    r'^(stage0|stage[1-4]\.\d+)\.(rbr_(dense|1x1)\.(conv\.weight|bn\.' + _BN + r')'
    r'|rbr_identity\.' + _BN + r'|rbr_reparam\.(weight|bias)|se\.(down|up)\.(weight|bias))$'
    r'|^linear\.(weight|bias)$')
OFFICIAL_REPGHOST_KEY = re.compile(
    r'^(conv_stem\.weight|bn1\.' + _BN + r'|conv_head\.(weight|bias)|classifier\.(weight|bias)'
    r'|blocks\.9\.0\.(conv\.weight|bn1\.' + _BN + r'))$'
    r'|^blocks\.[0-8]\.\d+\.(ghost[12]\.(primary_conv\.(0\.weight|1\.' + _BN + r')'
    r'|cheap_operation\.(0\.weight|1\.' + _BN + r'|weight|bias)|fusion_bn\.0\.' + _BN + r')'
    r'|conv_dw\.weight|bn_dw\.' + _BN + r'|se\.conv_(reduce|expand)\.(weight|bias)'
    r'|shortcut\.[02]\.weight|shortcut\.[13]\.' + _BN + r')$')


def official_repvgg_state(classifier) -> dict:
    """The official checkpoint of the same weights: DingXiaoH/RepVGG key names.

    mmpretrain's RepVGG is the official network with other names (its
    ``repvgg_to_mmcls.py`` renames one into the other); this is the inverse.
    """
    out = {}
    for key, value in classifier.state_dict().items():
        if key.startswith('head.fc.'):
            out['linear.' + key[len('head.fc.'):]] = value
            continue
        key = key[len('backbone.'):]
        key = re.sub(r'^stem\.', 'stage0.', key)
        key = re.sub(r'^stage_(\d)\.', r'stage\1.', key)
        for old, new in (('branch_3x3.norm', 'rbr_dense.bn'), ('branch_3x3.conv', 'rbr_dense.conv'),
                         ('branch_1x1.norm', 'rbr_1x1.bn'), ('branch_1x1.conv', 'rbr_1x1.conv'),
                         ('branch_norm', 'rbr_identity'), ('branch_reparam', 'rbr_reparam'),
                         ('se_layer.conv1.conv', 'se.down'), ('se_layer.conv2.conv', 'se.up')):
            key = key.replace(old, new)
        out[key] = value
    bad = [k for k in out if not OFFICIAL_REPVGG_KEY.match(k)]
    assert not bad, f'not official RepVGG names: {bad[:5]}'
    return out


@pytest.fixture(scope='module')
def timm_a0(tmp_path_factory):
    """timm repvgg_a0 with random weights, its checkpoint (state dict) and features."""
    model = randomized(timm.create_model('repvgg_a0'), seed=1)
    path = tmp_path_factory.mktemp('timm') / 'repvgg_a0.pth'
    torch.save(model.state_dict(), path)
    with torch.no_grad():
        features = timm_repvgg_features(model, image())
    return model, path, features


# ---------------------------------------------------------------- RepVGG against the peers


def test_timm_repvgg_a0_train_and_deploy(timm_a0, tmp_path):
    model, src, expected = timm_a0
    report = convert_checkpoint(str(src), str(tmp_path / 'a0.pth'), 'timm', 'repvgg-a0')
    assert report['dropped'] == ['head.fc.weight', 'head.fc.bias'] and not report['deploy']
    ours = pretrained(RepVGG, tmp_path / 'a0.pth', arch='A0')
    with torch.no_grad():
        assert_same_features(expected, ours(image()))
        # the comparison is not trivially true: random weights give other features
        assert max_rel_diff(expected, RepVGG('A0').eval()(image())) > 0.1

    fused = timm_reparameterize(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    torch.save(fused.state_dict(), tmp_path / 'a0_deploy_timm.pth')
    report = convert_checkpoint(str(tmp_path / 'a0_deploy_timm.pth'), str(tmp_path / 'a0d.pth'),
                                'timm', 'repvgg-a0')
    assert report['deploy'] and report['backbone']['deploy'] is True
    ours = pretrained(RepVGG, tmp_path / 'a0d.pth', arch='A0', deploy=True)
    with torch.no_grad():
        assert_same_features(expected, ours(image()))


def test_timm_repvgg_b1g4_grouped(tmp_path):
    model = randomized(timm.create_model('repvgg_b1g4'), seed=2)
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'b1g4.pth')
    convert_checkpoint(str(tmp_path / 'b1g4.pth'), str(tmp_path / 'out.pth'), 'timm',
                       'RepVGG-B1g4')  # --arch is case-insensitive
    ours = pretrained(RepVGG, tmp_path / 'out.pth', arch='B1g4')
    assert ours.stages[0][1].branch_3x3.conv.groups == 4
    x = image(48, 64)
    with torch.no_grad():
        assert_same_features(timm_repvgg_features(model, x), ours(x))


@pytest.mark.parametrize('deploy', [False, True])
def test_mmpretrain_repvgg_classifier_checkpoint(tmp_path, deploy):
    classifier = randomized(mmpretrain_classifier('A0'), seed=3)
    x = image()
    with torch.no_grad():
        expected = classifier.backbone(x)
    if deploy:
        classifier.backbone.switch_to_deploy()
    state = classifier.state_dict()
    assert any(k.startswith('head.') for k in state) and any(k.startswith('backbone.') for k in state)
    torch.save({'meta': dict(epoch=100, dataset_meta=dict(classes=list('abc'))),
                'state_dict': state}, tmp_path / 'mmpretrain.pth')
    report = convert_checkpoint(str(tmp_path / 'mmpretrain.pth'), str(tmp_path / 'out.pth'),
                                'mmpretrain', 'repvgg-a0')
    assert report['deploy'] is deploy
    assert sorted(report['dropped']) == ['head.fc.bias', 'head.fc.weight']
    ours = pretrained(RepVGG, tmp_path / 'out.pth', arch='A0', deploy=deploy)
    with torch.no_grad():
        assert_same_features(expected, ours(x))


@pytest.fixture(scope='module')
def mmpretrain_b1g4():
    """An mmpretrain RepVGG-B1g4 classifier (random weights), its backbone features, fused copy."""
    classifier = randomized(mmpretrain_classifier('B1g4'), seed=4)
    with torch.no_grad():
        features = classifier.backbone(image(48, 64))
    fused = copy.deepcopy(classifier)
    fused.backbone.switch_to_deploy()
    return {False: classifier, True: fused}, features


@pytest.mark.parametrize('deploy', [False, True])
def test_official_repvgg_b1g4(tmp_path, mmpretrain_b1g4, deploy):
    """An official B1g4 checkpoint (``RepVGG-B1g4-train.pth`` / ``convert.py`` output)."""
    classifiers, expected = mmpretrain_b1g4
    official = official_repvgg_state(classifiers[deploy])
    assert ('stage0.rbr_reparam.weight' in official) is deploy
    assert official['stage1.1.rbr_' + ('reparam.weight' if deploy else 'dense.conv.weight')].shape[1] == 32
    torch.save(official, tmp_path / 'RepVGG-B1g4.pth')  # the official files are plain state dicts
    report = convert_checkpoint(str(tmp_path / 'RepVGG-B1g4.pth'), str(tmp_path / 'out.pth'),
                                'official', 'repvgg-b1g4')
    assert report['dropped'] == ['linear.weight', 'linear.bias'] and report['deploy'] is deploy
    ours = pretrained(RepVGG, tmp_path / 'out.pth', arch='B1g4', deploy=deploy)
    with torch.no_grad():
        assert_same_features(expected, ours(image(48, 64)))


@pytest.mark.parametrize('source', ['mmpretrain', 'official'])
def test_repvgg_se_blocks_convert_with_their_gates(source):
    """D2se's SE (also in the stem) on a small arch: mmpretrain's SELayer / the official SEBlock."""
    depths, widths = [1, 2, 2, 1], [0.5, 0.5, 0.5, 0.5]
    init_default_scope('mmpretrain')
    try:
        backbone = MMPRETRAIN_MODELS.build(dict(
            type='RepVGG', out_indices=(0, 1, 2, 3),
            arch=dict(num_blocks=depths, width_factor=widths, group_layer_map=None,
                      se_cfg=dict(ratio=16, divisor=1))))
    finally:
        init_default_scope('mmdet')
    randomized(backbone, seed=8)  # (mmpretrain's RepVGG.train() returns None)
    classifier = nn.Module()
    classifier.backbone = backbone
    state = ({k[len('backbone.'):]: v for k, v in classifier.state_dict().items()}
             if source == 'mmpretrain' else official_repvgg_state(classifier))
    assert any('se' in k for k in state)
    conversion = repvgg_converter.convert(state, source, 'repvgg-d2se')
    ours = RepVGG(dict(num_blocks=depths, width_factor=widths, use_se=True))
    ours.load_state_dict(conversion.state_dict, strict=True)
    x = image()
    with torch.no_grad():
        assert_same_features(backbone(x), ours.eval()(x))


TIMM_REPVGG = {'A0': 'repvgg_a0', 'A1': 'repvgg_a1', 'A2': 'repvgg_a2', 'B0': 'repvgg_b0',
               'B1': 'repvgg_b1', 'B1g4': 'repvgg_b1g4', 'B2': 'repvgg_b2', 'B2g4': 'repvgg_b2g4',
               'B3': 'repvgg_b3', 'B3g4': 'repvgg_b3g4', 'D2se': 'repvgg_d2se'}


@pytest.mark.parametrize('arch', list(RepVGG.arch_settings))
def test_every_repvgg_arch_converts_from_every_source(arch):
    """Keys and shapes of all 14 archs, both forms (structure only: meta tensors)."""
    cli_arch = f'repvgg-{arch.lower()}'
    assert find_family(cli_arch) is repvgg_converter
    with torch.device('meta'):
        for deploy in (False, True):
            classifier = mmpretrain_classifier(arch, deploy=deploy)
            whole = {f'backbone.{k}': v for k, v in classifier.backbone.state_dict().items()}
            sources = {'mmpretrain': unwrap_checkpoint({'state_dict': whole})[0],
                       'official': official_repvgg_state(classifier)}
            if arch in TIMM_REPVGG and not deploy:  # timm has no g2 models
                sources['timm'] = timm.create_model(TIMM_REPVGG[arch]).state_dict()
            for source, state in sources.items():
                conversion = repvgg_converter.convert(state, source, cli_arch)
                assert conversion.deploy is deploy
                check_against_backbone(conversion.state_dict,
                                       dict(repvgg_converter.ARCHS[cli_arch], deploy=deploy),
                                       cli_arch)


# ---------------------------------------------------------------- RepGhostNet against the peers


@pytest.mark.parametrize('name, width', [('repghostnet_100', 1.0), ('repghostnet_050', 0.5)])
def test_timm_repghostnet_ema_checkpoint(tmp_path, name, width):
    """A timm training checkpoint: 'state_dict', 'state_dict_ema' (converted with --ema), 'args'."""
    model = randomized(timm.create_model(name), seed=5)
    ema = randomized(timm.create_model(name), seed=6)
    torch.save({'epoch': 299, 'arch': name, 'state_dict': model.state_dict(),
                'state_dict_ema': ema.state_dict(), 'args': argparse.Namespace(model=name, lr=0.6)},
               tmp_path / 'checkpoint-299.pth.tar')
    x = image()
    report = convert_checkpoint(str(tmp_path / 'checkpoint-299.pth.tar'), str(tmp_path / 'ema.pth'),
                                'timm', f'repghostnet-{width}x', ema=True)
    assert sorted(report['dropped'])[:3] == ['blocks.9.0.bn1.bias', 'blocks.9.0.bn1.num_batches_tracked',
                                             'blocks.9.0.bn1.running_mean']
    assert {'conv_head.weight', 'classifier.weight', 'blocks.9.0.conv.weight'} <= set(report['dropped'])
    ours = pretrained(RepGhostNet, tmp_path / 'ema.pth', widen_factor=width)
    with torch.no_grad():
        assert_same_features(repghost_features(ema, x), ours(x))
        assert max_rel_diff(repghost_features(model, x), ours(x)) > 0.1  # the EMA, not the raw weights

    report = convert_checkpoint(str(tmp_path / 'checkpoint-299.pth.tar'), str(tmp_path / 'raw.pth'),
                                'timm', f'repghostnet-{width}x')
    assert any('--ema' in note for note in report['notes'])
    ours = pretrained(RepGhostNet, tmp_path / 'raw.pth', widen_factor=width)
    with torch.no_grad():
        assert_same_features(repghost_features(model, x), ours(x))


@pytest.mark.parametrize('source', ['official', 'timm'])
def test_repghostnet_deploy_checkpoint_gets_its_bns_folded(tmp_path, source):
    model = randomized(timm.create_model('repghostnet_100'), seed=7)
    x = image()
    with torch.no_grad():
        expected = repghost_features(model, x)
    fused = timm_reparameterize(model)
    # the official / timm deploy form keeps the 47 BNs outside the RepGhost modules
    assert count_bn(fused) - count_bn(fused.blocks[9]) == 47
    assert 'blocks.3.0.ghost1.cheap_operation.weight' in fused.state_dict()
    torch.save(fused.state_dict(), tmp_path / 'deploy.pth')
    report = convert_checkpoint(str(tmp_path / 'deploy.pth'), str(tmp_path / 'out.pth'), source,
                                'repghostnet-1.0x')
    assert report['deploy']
    ours = pretrained(RepGhostNet, tmp_path / 'out.pth', widen_factor=1.0, deploy=True)
    assert count_bn(ours) == 0
    with torch.no_grad():
        assert_same_features(expected, ours(x))


def test_timm_repghostnet_keys_are_the_official_ones():
    """timm's repghostnet_* uses the official names, so one layout serves both sources."""
    for fused in (False, True):
        model = timm.create_model('repghostnet_130')
        state = (timm_reparameterize(model) if fused else model).state_dict()
        bad = [k for k in state if not OFFICIAL_REPGHOST_KEY.match(k)]
        assert not bad, f'not official RepGhost names: {bad[:5]}'


TIMM_REPGHOST = {0.5: 'repghostnet_050', 0.58: 'repghostnet_058', 0.8: 'repghostnet_080',
                 1.0: 'repghostnet_100', 1.11: 'repghostnet_111', 1.3: 'repghostnet_130',
                 1.5: 'repghostnet_150', 2.0: 'repghostnet_200'}


@pytest.mark.parametrize('width', RepGhostNet.WIDEN_FACTORS)
def test_every_repghostnet_width_converts(width):
    cli_arch = f'repghostnet-{width}x'
    assert find_family(cli_arch) is repghost_converter
    with torch.device('meta'):
        model = timm.create_model(TIMM_REPGHOST[width])
    for deploy in (False, True):
        state = model.state_dict()
        if deploy:  # the deploy keys: fusion_bn gone, cheap_operation one conv with bias
            state = {re.sub(r'cheap_operation\.0\.', 'cheap_operation.', k): v
                     for k, v in state.items()
                     if 'fusion_bn' not in k and 'cheap_operation.1.' not in k}
            for k in [k for k in state if k.endswith('cheap_operation.weight')]:
                state[k[:-len('weight')] + 'bias'] = torch.empty(state[k].shape[0], device='meta')
        conversion = repghost_converter.convert(state, 'official', cli_arch)
        assert conversion.deploy is deploy
        check_against_backbone(conversion.state_dict,
                               dict(repghost_converter.ARCHS[cli_arch], deploy=deploy), cli_arch)


# ---------------------------------------------------------------- wrappers and the CLI


def test_unwrap_checkpoint_wrappers():
    w = torch.zeros(1)
    assert unwrap_checkpoint({'a': w})[0] == {'a': w}
    state, dropped, notes = unwrap_checkpoint({'model': {'module.a': w, 'module.b': w}})
    assert list(state) == ['a', 'b'] and not dropped and any('module.' in n for n in notes)
    state, dropped, _ = unwrap_checkpoint(
        {'meta': {}, 'state_dict': {'backbone.a': w, 'neck.n': w, 'head.fc.weight': w}})
    assert list(state) == ['a'] and dropped == ['neck.n', 'head.fc.weight']
    state, _, _ = unwrap_checkpoint({'state_dict': {'a': w}, 'state_dict_ema': {'e': w}}, ema=True)
    assert list(state) == ['e']
    state, _, _ = unwrap_checkpoint({'model': {'a': w}, 'model_ema': {'e': w}}, ema=True)
    assert list(state) == ['e']
    # official RepVGG main.py: 'model' and 'ema'
    state, _, notes = unwrap_checkpoint({'model': {'a': w}, 'ema': {'e': w}, 'epoch': 3}, ema=True)
    assert list(state) == ['e']
    state, _, notes = unwrap_checkpoint({'model': {'a': w}, 'ema': {'e': w}, 'epoch': 3})
    assert list(state) == ['a'] and any("'ema'" in n and '--ema' in n for n in notes)
    # mmengine's EMAHook swaps the sets before saving: 'state_dict' holds the EMA weights,
    # 'ema_state_dict' (the averaged model: 'module.' keys and its step counter) the raw ones
    mmengine_ema = {'state_dict': {'backbone.e': w, 'head.fc.weight': w},
                    'ema_state_dict': {'steps': w, 'module.backbone.a': w,
                                       'module.head.fc.weight': w}}
    state, dropped, notes = unwrap_checkpoint(mmengine_ema, ema=True)
    assert list(state) == ['e'] and dropped == ['head.fc.weight']
    state, dropped, notes = unwrap_checkpoint(mmengine_ema)
    assert list(state) == ['a'] and dropped == ['steps', 'head.fc.weight']
    assert any('raw' in n and '--ema' in n for n in notes)
    with pytest.raises(ConversionError, match='no EMA weights'):
        unwrap_checkpoint({'state_dict': {'a': w}}, ema=True)


def test_rename_parts_matches_whole_names_once():
    w = torch.zeros(1)
    table = (('shortcut.0', 'shortcut.0.conv'), ('shortcut.1', 'shortcut.0.bn'), ('bn', 'norm'))
    out = rename_parts({'b.shortcut.0.weight': w, 'b.shortcut.1.weight': w, 'b.bn_dw.weight': w,
                        'b.bn.weight': w}, table)
    assert list(out) == ['b.shortcut.0.conv.weight', 'b.shortcut.0.bn.weight', 'b.bn_dw.weight',
                         'b.norm.weight']


def test_cli_converts_and_prints_the_backbone_config(timm_a0, tmp_path, capsys):
    _, src, expected = timm_a0
    out = tmp_path / 'sub' / 'a0.pth'
    assert cli_main([str(src), str(out), '--from', 'timm', '--arch', 'repvgg-a0']) == 0
    printed = capsys.readouterr().out
    assert f"init_cfg=dict(type='Pretrained', checkpoint='{out}')" in printed
    assert "arch='A0'" in printed and 'deploy=False' in printed
    saved = torch.load(out, weights_only=True)
    assert saved['meta']['source'] == 'timm' and saved['meta']['arch'] == 'repvgg-a0'
    with torch.no_grad():
        assert_same_features(expected, pretrained(RepVGG, out, arch='A0')(image()))


def test_safetensors_source(timm_a0, tmp_path):
    from safetensors.torch import save_file
    model, _, expected = timm_a0
    save_file(model.state_dict(), str(tmp_path / 'model.safetensors'))
    convert_checkpoint(str(tmp_path / 'model.safetensors'), str(tmp_path / 'out.pth'), 'timm',
                       'repvgg-a0')
    with torch.no_grad():
        assert_same_features(expected, pretrained(RepVGG, tmp_path / 'out.pth', arch='A0')(image()))


def test_every_family_is_registered():
    assert set(FAMILY_MODULES) == {'repvgg', 'repghostnet', 'orepa', 'replknet', 'mobileone',
                                   'repvit'}
    for key in ('orepa', 'replknet'):
        try:  # H8b's modules (issue #8); absent only on a branch without them
            __import__(FAMILY_MODULES[key])
        except ModuleNotFoundError as error:
            if error.name != FAMILY_MODULES[key]:
                raise
            pytest.skip(f'{FAMILY_MODULES[key]} is not in this tree yet')
    from mmrep.converters import FAMILIES
    assert len(FAMILIES) == 6 and {'repvgg', 'repghostnet', 'mobileone', 'repvit'} <= set(FAMILIES)
    for module in FAMILIES.values():
        assert module.ARCHS and module.SOURCES and callable(module.convert)
        for arch in module.ARCHS:
            assert find_family(arch) is module


# ---------------------------------------------------------------- refusals of the converter


@pytest.fixture
def a0_state(timm_a0):
    return dict(timm_a0[0].state_dict())


def convert_state(state, tmp_path, source='timm', arch='repvgg-a0', **kwargs):
    torch.save(state, tmp_path / 'src.pth')
    return convert_checkpoint(str(tmp_path / 'src.pth'), str(tmp_path / 'out.pth'), source, arch,
                              **kwargs)


def test_refuses_wrong_arch(a0_state, tmp_path):
    with pytest.raises(ConversionError, match=r'keys with the wrong shape \(stages.0.0.branch_1x1'
                                              r'.bn.bias: \[48\] instead of \[64\]'):
        convert_state(a0_state, tmp_path, arch='repvgg-a1')
    with pytest.raises(ConversionError, match=r'missing keys \(stages.0.2.branch_1x1'):
        convert_state(a0_state, tmp_path, arch='repvgg-b0')
    assert not (tmp_path / 'out.pth').exists()


def test_refuses_wrong_width(tmp_path):
    with torch.device('meta'):
        state = timm.create_model('repghostnet_100').state_dict()
    conversion = repghost_converter.convert(state, 'timm', 'repghostnet-0.5x')
    with pytest.raises(ConversionError, match=r'\d+ keys with the wrong shape \(stages'):
        check_against_backbone(conversion.state_dict,
                               dict(repghost_converter.ARCHS['repghostnet-0.5x'], deploy=False),
                               'repghostnet-0.5x')


def test_refuses_missing_unexpected_and_misshapen_keys(a0_state, tmp_path):
    missing = dict(a0_state)
    del missing['stages.2.3.conv_1x1.conv.weight']
    with pytest.raises(ConversionError, match=r'1 missing key \(stages.2.3.branch_1x1.conv.weight\)'):
        convert_state(missing, tmp_path)
    extra = dict(a0_state, **{'stages.0.0.extra.weight': torch.zeros(3)})
    with pytest.raises(ConversionError, match=r'1 unexpected key \(stages.0.0.extra.weight\)'):
        convert_state(extra, tmp_path)
    misshapen = dict(a0_state, **{'stages.3.0.conv_kxk.conv.weight': torch.zeros(1280, 192, 1, 1)})
    with pytest.raises(ConversionError,
                       match=r'stages.3.0.branch_3x3.conv.weight: \[1280, 192, 1, 1\] instead of '
                             r'\[1280, 192, 3, 3\]'):
        convert_state(misshapen, tmp_path)


def test_refuses_another_layout_source_or_arch(a0_state, tmp_path):
    with pytest.raises(ConversionError, match="not in the official RepVGG layout: no key starts with 'stage0"):
        convert_state(a0_state, tmp_path, source='official')
    with pytest.raises(ConversionError, match='repghostnet converts from official, timm'):
        convert_state(a0_state, tmp_path, source='mmpretrain', arch='repghostnet-1.0x')
    with pytest.raises(ConversionError, match="unknown --arch 'repvgg-a9'; repvgg archs: repvgg-a0"):
        convert_state(a0_state, tmp_path, arch='repvgg-a9')
    with pytest.raises(ConversionError, match="unknown --arch 'resnet50'"):
        convert_state(a0_state, tmp_path, arch='resnet50')
    mixed = dict(a0_state, **{'stages.0.0.reparam_conv.weight': torch.zeros(1)})
    with pytest.raises(ConversionError, match='mixes fused blocks'):
        convert_state(mixed, tmp_path)
    with pytest.raises(ConversionError, match='no EMA weights'):
        convert_state(a0_state, tmp_path, ema=True)


def test_never_overwrites_without_force(a0_state, tmp_path, capsys):
    torch.save(a0_state, tmp_path / 'src.pth')
    (tmp_path / 'out.pth').write_bytes(b'precious')
    argv = [str(tmp_path / 'src.pth'), str(tmp_path / 'out.pth'), '--from', 'timm',
            '--arch', 'repvgg-a0']
    assert cli_main(argv) == 1
    assert 'exists; refusing to overwrite it (pass --force)' in capsys.readouterr().err
    assert (tmp_path / 'out.pth').read_bytes() == b'precious'
    with pytest.raises(ConversionError, match='OUT is the input'):
        convert_checkpoint(str(tmp_path / 'src.pth'), str(tmp_path / 'src.pth'), 'timm',
                           'repvgg-a0', force=True)
    assert cli_main(argv + ['--force']) == 0
    assert 'state_dict' in torch.load(tmp_path / 'out.pth', weights_only=True)
    assert not (tmp_path / 'out.pth.part').exists()


def test_refuses_pickled_objects_unless_trusted(a0_state, tmp_path):
    torch.save({'state_dict': a0_state, 'hook': nn.ReLU()}, tmp_path / 'src.pth')
    with pytest.raises(UntrustedCheckpointError,
                       match=r'refuses: torch.nn.modules.activation.ReLU\b'):
        load_source(str(tmp_path / 'src.pth'))
    convert_checkpoint(str(tmp_path / 'src.pth'), str(tmp_path / 'out.pth'), 'timm', 'repvgg-a0',
                       unsafe=True)
    out = tmp_path / 'cli.pth'
    assert cli_main([str(tmp_path / 'src.pth'), str(out), '--from', 'timm',
                     '--arch', 'repvgg-a0']) == 1
    assert not out.exists()


# ---------------------------------------------------------------- strict Pretrained loading


@pytest.fixture(scope='module')
def converted_a0(timm_a0, tmp_path_factory):
    path = tmp_path_factory.mktemp('converted') / 'a0.pth'
    convert_checkpoint(str(timm_a0[1]), str(path), 'timm', 'repvgg-a0')
    return path


def test_pretrained_of_another_model_is_refused_when_built(converted_a0, tmp_path):
    ghost = RepGhostNet(0.5).state_dict()
    torch.save({'state_dict': ghost}, tmp_path / 'ghost.pth')
    with pytest.raises(PretrainedMismatchError,
                       match=r'ghost.pth holds repghostnet-0.5x \(mmrep layout, training form\) '
                             r'weights .* but the backbone is RepVGG repvgg-a0'):
        RepVGG('A0', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'ghost.pth')))
    # a converted RepVGG of another arch: its meta names the arch
    with pytest.raises(PretrainedMismatchError,
                       match=r'holds repvgg-a0 .*\(its meta\), but the backbone is RepVGG repvgg-a1'):
        RepVGG('A1', init_cfg=dict(type='Pretrained', checkpoint=str(converted_a0)))


def test_pretrained_of_an_unknown_layout_is_refused_naming_the_keys(tmp_path):
    state = {k.replace('branch_', 'path_'): v for k, v in RepVGG('A0').state_dict().items()}
    torch.save({'state_dict': state}, tmp_path / 'other.pth')
    with pytest.raises(PretrainedMismatchError) as info:
        RepVGG('A0', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'other.pth')))
    message = str(info.value)
    n_missing = len(RepVGG('A0').state_dict()) - sum(
        k.endswith('num_batches_tracked') for k in RepVGG('A0').state_dict())
    assert f'{n_missing} missing keys (stages.0.0.branch_1x1.bn.bias' in message
    assert f'{len(state)} unexpected keys (' in message
    assert 'Its layout is none that mmrep converts' in message


def test_pretrained_timm_checkpoint_converts_on_the_fly(timm_a0):
    """An unconverted timm checkpoint is detected (layout, arch, form) and converted on load."""
    ours = pretrained(RepVGG, timm_a0[1], arch='A0')
    with torch.no_grad():
        assert_same_features(timm_a0[2], ours(image()))


def test_pretrained_form_mismatch_says_which_deploy(converted_a0):
    with pytest.raises(PretrainedMismatchError, match='build the backbone with deploy=False'):
        RepVGG('A0', deploy=True, init_cfg=dict(type='Pretrained', checkpoint=str(converted_a0)))


def test_pretrained_prefix_of_a_whole_model_checkpoint(timm_a0, converted_a0, tmp_path):
    state = torch.load(converted_a0, weights_only=True)['state_dict']
    whole = {f'backbone.{k}': v for k, v in state.items()}
    whole['neck.lateral.weight'] = torch.zeros(2)
    torch.save({'state_dict': whole}, tmp_path / 'detector.pth')
    # without a prefix the unwrapper keeps a whole model's backbone
    for prefix in (None, 'backbone', 'backbone.'):
        model = RepVGG('A0', init_cfg=dict(type='Pretrained', prefix=prefix,
                                           checkpoint=str(tmp_path / 'detector.pth'))).eval()
        model.init_weights()
        with torch.no_grad():
            assert_same_features(timm_a0[2], model(image()))
    with pytest.raises(PretrainedMismatchError, match="no key .* starts with prefix 'teacher.'"):
        RepVGG('A0', init_cfg=dict(type='Pretrained', prefix='teacher',
                                   checkpoint=str(tmp_path / 'detector.pth')))


def test_pretrained_after_other_init_cfgs(timm_a0, converted_a0):
    model = RepVGG('A0', init_cfg=[dict(type='Pretrained', checkpoint=str(converted_a0)),
                                   dict(type='Constant', val=3.0, layer='Conv2d')])
    model.init_weights()
    with torch.no_grad():
        assert_same_features(timm_a0[2], model.eval()(image()))
    assert model.init_cfg[0]['type'] == 'Pretrained'  # the user's config is left as it was


def test_detector_config_loads_converted_backbone(timm_a0, converted_a0):
    """The real path: the backbone init_cfg of an mmdet config, built and initialised by mmdet."""
    from mmdet.registry import MODELS
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', 'retinanet_repvgg-a0_1x.py'))
    init_default_scope('mmdet')
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(converted_a0))
    detector = MODELS.build(cfg.model)
    detector.init_weights()
    with torch.no_grad():
        assert_same_features(timm_a0[2], detector.backbone.eval()(image()))
    # the unconverted timm file: converted when the detector initialises its weights
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(timm_a0[1]))
    detector = MODELS.build(cfg.model)
    detector.init_weights()
    with torch.no_grad():
        assert_same_features(timm_a0[2], detector.backbone.eval()(image()))
