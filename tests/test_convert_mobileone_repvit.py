"""MobileOne and RepViT weights: official, timm and mmpretrain checkpoints convert into mmrep
backbones with the peers' stage outputs, in training and deploy form; wrong ones are refused.

The peers are the real models of timm 1.0.31 (``mobileone_s*``, ``repvit_*``) and
mmpretrain 1.2.0 (``MobileOne``) with random weights and BN statistics, saved in
their own layouts. The official layouts are written from the official key names
(:mod:`official_layouts`).
"""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from fusion_check import count_bn, max_rel_diff, randomize_bn
from official_layouts import official_mobileone_state, official_repvit_state
from test_convert_weights import assert_same_features, cli_main, image, pretrained
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS
from timm.utils.model import reparameterize_model as timm_reparameterize
from torch import nn

import mmrep  # noqa: F401
from mmrep.converters import ConversionError, convert_checkpoint, find_family
from mmrep.converters import mobileone as mobileone_converter
from mmrep.converters import repvit as repvit_converter
from mmrep.converters.common import check_against_backbone
from mmrep.models.backbones.mobileone import MobileOne
from mmrep.models.backbones.repvit import RepViT


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """Random BN statistics and affine parameters, random biases; the peers' own conv init.

    (test_convert_weights re-draws every conv with Kaiming's normal init, which
    through RepViT's residual FFNs grows the features until float32 rounding
    alone exceeds 1e-4 of their scale.)
    """
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    return randomize_bn(model, seed).eval()


def timm_features(model, x):
    """timm's ``forward_intermediates`` at strides 4/8/16/32 (MobileOne's also gives the stem)."""
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
    return maps[-4:]


# ---------------------------------------------------------------- MobileOne against the peers


@pytest.fixture(scope='module')
def timm_mobileone_s0():
    model = randomized(timm.create_model('mobileone_s0'), seed=1)
    return model, timm_features(model, image())


@pytest.mark.parametrize('source', ['timm', 'official'])
@pytest.mark.parametrize('deploy', [False, True])
def test_mobileone_s0_timm_and_official(tmp_path, timm_mobileone_s0, source, deploy):
    model, expected = timm_mobileone_s0
    if deploy:  # timm's reparameterize_model is the official reparameterize_model
        model = timm_reparameterize(model)
        assert count_bn(model) == 0
    state = model.state_dict()
    if source == 'official':
        state = official_mobileone_state(state)
        assert ('stage0.reparam_conv.weight' in state) is deploy
    torch.save(state, tmp_path / 'src.pth.tar')  # the official files are plain state dicts
    report = convert_checkpoint(str(tmp_path / 'src.pth.tar'), str(tmp_path / 'out.pth'), source,
                                'mobileone-s0')
    assert report['deploy'] is deploy
    assert sorted(report['dropped']) == (['linear.bias', 'linear.weight'] if source == 'official'
                                         else ['head.fc.bias', 'head.fc.weight'])
    ours = pretrained(MobileOne, tmp_path / 'out.pth', arch='s0', deploy=deploy)
    with torch.no_grad():
        assert_same_features(expected, ours(image()))
        if not deploy:  # mmrep's own fusion gives the same network
            ours.reparameterize()
            assert_same_features(expected, ours(image()))
    # the comparison can fail: other random weights give other features
    with torch.no_grad():
        assert max_rel_diff(expected, MobileOne('s0').eval()(image())) > 0.1


def test_mobileone_s4_se_blocks_timm(tmp_path):
    model = randomized(timm.create_model('mobileone_s4'), seed=2)
    x = image(48, 64)
    expected = timm_features(model, x)
    conversion = mobileone_converter.convert(model.state_dict(), 'timm', 'mobileone-s4')
    assert any(k.endswith('se.down.weight') for k in conversion.state_dict)
    ours = MobileOne('s4')
    ours.load_state_dict(conversion.state_dict, strict=True)
    with torch.no_grad():
        assert_same_features(expected, ours.eval()(x))


def mmpretrain_mobileone(arch: str):
    """An mmpretrain ImageClassifier with a MobileOne backbone, built by mmpretrain's registry."""
    init_default_scope('mmpretrain')
    try:
        return MMPRETRAIN_MODELS.build(dict(
            type='ImageClassifier',
            backbone=dict(type='MobileOne', arch=arch, out_indices=(0, 1, 2, 3)),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=10,
                      in_channels=MobileOne(arch).out_channels[-1])))
    finally:
        init_default_scope('mmdet')


@pytest.mark.parametrize('arch', ['s0', 's4'])
@pytest.mark.parametrize('deploy', [False, True])
def test_mmpretrain_mobileone_classifier_checkpoint(tmp_path, arch, deploy):
    classifier = randomized(mmpretrain_mobileone(arch), seed=3)
    x = image(32, 64)
    with torch.no_grad():
        expected = classifier.backbone(x)
    if deploy:
        classifier.backbone.switch_to_deploy()
    torch.save({'meta': dict(epoch=300), 'state_dict': classifier.state_dict()},
               tmp_path / 'mmpretrain.pth')
    report = convert_checkpoint(str(tmp_path / 'mmpretrain.pth'), str(tmp_path / 'out.pth'),
                                'mmpretrain', f'mobileone-{arch}')
    assert report['deploy'] is deploy
    assert sorted(report['dropped']) == ['head.fc.bias', 'head.fc.weight']
    ours = pretrained(MobileOne, tmp_path / 'out.pth', arch=arch, deploy=deploy)
    with torch.no_grad():
        assert_same_features(expected, ours(x))


@pytest.mark.parametrize('arch', list(MobileOne.arch_settings))
def test_every_mobileone_arch_converts_from_every_source(arch):
    """Keys and shapes of all archs, in both forms, from all three layouts (meta tensors)."""
    cli_arch = f'mobileone-{arch}'
    assert find_family(cli_arch) is mobileone_converter
    with torch.device('meta'):
        for deploy in (False, True):
            model = timm.create_model(f'mobileone_{arch}')
            classifier = mmpretrain_mobileone(arch)
            if deploy:
                model = timm_reparameterize(model)
                classifier.backbone.switch_to_deploy()
            sources = {'timm': model.state_dict(),
                       'official': official_mobileone_state(model.state_dict()),
                       'mmpretrain': {k[len('backbone.'):]: v
                                      for k, v in classifier.state_dict().items()
                                      if k.startswith('backbone.')}}
            for source, state in sources.items():
                conversion = mobileone_converter.convert(state, source, cli_arch)
                assert conversion.deploy is deploy
                check_against_backbone(conversion.state_dict,
                                       dict(mobileone_converter.ARCHS[cli_arch], deploy=deploy),
                                       cli_arch)


# ---------------------------------------------------------------- RepViT against the peers


@pytest.mark.parametrize('arch', ['m0.9', 'm1.1', 'm1'])
@pytest.mark.parametrize('source', ['timm', 'official'])
@pytest.mark.parametrize('deploy', [False, True])
def test_repvit_timm_and_official(tmp_path, arch, source, deploy):
    model = randomized(timm.create_model('repvit_' + arch.replace('.', '_')), seed=4)
    x = image(64, 64)
    expected = timm_features(model, x)
    if deploy:  # timm RepVit.fuse, the official utils.replace_batchnorm
        model = copy.deepcopy(model).fuse()
        assert count_bn(model) == 0
    state = model.state_dict() if source == 'timm' else official_repvit_state(model)
    torch.save({'model': state}, tmp_path / 'src.pth')  # the official files hold 'model'
    report = convert_checkpoint(str(tmp_path / 'src.pth'), str(tmp_path / 'out.pth'), source,
                                f'repvit-{arch}')
    assert report['deploy'] is deploy
    assert report['dropped'] and all(k.startswith(('head.', 'classifier.'))
                                     for k in report['dropped'])
    ours = pretrained(RepViT, tmp_path / 'out.pth', arch=arch, deploy=deploy)
    with torch.no_grad():
        assert_same_features(expected, ours(x))
        if not deploy:
            ours.reparameterize()
            assert count_bn(ours) == 0
            assert_same_features(expected, ours(x))


@pytest.mark.parametrize('arch', list(RepViT.arch_settings))
def test_every_repvit_arch_converts_from_both_sources(arch):
    cli_arch = f'repvit-{arch}'
    assert find_family(cli_arch) is repvit_converter
    with torch.device('meta'):
        for deploy in (False, True):
            model = timm.create_model('repvit_' + arch.replace('.', '_'))
            if deploy:
                model.fuse()
            for source, state in (('timm', model.state_dict()),
                                  ('official', official_repvit_state(model))):
                conversion = repvit_converter.convert(state, source, cli_arch)
                assert conversion.deploy is deploy
                check_against_backbone(conversion.state_dict,
                                       dict(repvit_converter.ARCHS[cli_arch], deploy=deploy),
                                       cli_arch)


# ---------------------------------------------------------------- bad input


def meta_model(name: str, fused: bool = False) -> nn.Module:
    with torch.device('meta'):
        model = timm.create_model(name)
        return model.fuse() if fused else model


def meta_state(name: str, fused: bool = False) -> dict:
    return meta_model(name, fused).state_dict()


def test_repvit_file_given_as_mobileone_is_refused_naming_keys():
    with pytest.raises(ConversionError, match=r'not in the timm MobileOne layout.*stem\.conv1\.c'):
        mobileone_converter.convert(meta_state('repvit_m1_1'), 'timm', 'mobileone-s0')
    with torch.device('meta'):
        official = official_repvit_state(timm.create_model('repvit_m1_1'))
    with pytest.raises(ConversionError, match=r'official MobileOne layout.*features\.0\.0'):
        mobileone_converter.convert(official, 'official', 'mobileone-s0')
    # and the other way round
    with pytest.raises(ConversionError, match=r'timm RepViT layout.*stem\.conv_kxk'):
        repvit_converter.convert(meta_state('mobileone_s0'), 'timm', 'repvit-m1.1')


def test_repvit_of_another_depth_is_refused_naming_keys():
    # m1.1 and m1.5 have the same widths: the deeper m1.5 names blocks m1.1 has not ...
    for source, state in (('timm', meta_state('repvit_m1_5')),
                          ('official', official_repvit_state(meta_model('repvit_m1_5')))):
        last = 'stages.0.blocks.3.' if source == 'timm' else 'features.4.'
        with pytest.raises(ConversionError, match=r'has \[4, 4, 24, 4\] blocks per stage, '
                                                  r'--arch repvit-m1.1 has \[2, 2, 12, 2\]: its '
                                                  rf'stage 0 ends with the block {last} '
                                                  rf'\({last}token_mixer'):
            repvit_converter.convert(state, source, 'repvit-m1.1')
    # ... and, without an arch to check, its keys do not fit m1.1's backbone
    conversion = repvit_converter.convert(meta_state('repvit_m1_5'), 'timm', None)
    with pytest.raises(ConversionError, match=r'unexpected keys \(stages\.0\.2\.'):
        check_against_backbone(conversion.state_dict, repvit_converter.ARCHS['repvit-m1.1'],
                               'repvit-m1.1')


def test_repvit_of_another_width_is_refused_naming_keys():
    conversion = repvit_converter.convert(meta_state('repvit_m1_0'), 'timm', 'repvit-m0.9')
    with pytest.raises(ConversionError, match=r'keys with the wrong shape \(stages\.0\.0\.'
                                              r'channel_mixer\.conv1\.bn\.bias: \[112\] '
                                              r'instead of \[96\]'):
        check_against_backbone(conversion.state_dict, repvit_converter.ARCHS['repvit-m0.9'],
                               'repvit-m0.9')


@pytest.mark.parametrize('fused', [False, True])
def test_legacy_repvit_given_as_current_arch_is_refused(fused):
    state = meta_state('repvit_m1', fused)
    if fused:  # fused, the two token mixers are the same conv: told apart by the widths
        conversion = repvit_converter.convert(state, 'timm', 'repvit-m1.0')
        with pytest.raises(ConversionError, match='wrong shape'):
            check_against_backbone(conversion.state_dict,
                                   dict(repvit_converter.ARCHS['repvit-m1.0'], deploy=True), 'm1.0')
        return
    for arch in ('repvit-m1.0', 'repvit-m0.9'):  # m0.9 has m1's widths and depths
        with pytest.raises(ConversionError,
                           match=r'legacy ones of m1/m2/m3 \(stages\.0\.blocks\.0\.token_mixer'
                                 r'\.conv1\.c\.weight.*pass repvit-m1'):
            repvit_converter.convert(state, 'timm', arch)
    official = official_repvit_state(meta_model('repvit_m1'))
    with pytest.raises(ConversionError, match=r'legacy.*features\.1\.token_mixer\.0\.conv1\.c\.'):
        repvit_converter.convert(official, 'official', 'repvit-m0.9')
    with pytest.raises(ConversionError, match=r'post-sum BN.*pass repvit-m0\.9'):
        repvit_converter.convert(meta_state('repvit_m0_9'), 'timm', 'repvit-m1')


def test_convert_weights_cli_for_both_families(tmp_path, capsys):
    model = randomized(timm.create_model('repvit_m0_9'), seed=5)
    torch.save(model.state_dict(), tmp_path / 'repvit.pth')
    assert cli_main([str(tmp_path / 'repvit.pth'), str(tmp_path / 'out.pth'), '--from', 'timm',
                     '--arch', 'repvit-m0.9']) == 0
    assert "type='RepViT', arch='m0.9'" in capsys.readouterr().out
    ours = pretrained(RepViT, tmp_path / 'out.pth', arch='m0.9')
    with torch.no_grad():
        assert_same_features(timm_features(model, image()), ours(image()))
    # the wrong family: exit code 1, the keys named, nothing written
    assert cli_main([str(tmp_path / 'repvit.pth'), str(tmp_path / 'mo.pth'), '--from', 'timm',
                     '--arch', 'mobileone-s1']) == 1
    assert 'stem.conv1.c.weight' in capsys.readouterr().err
    assert not (tmp_path / 'mo.pth').exists()
