"""MobileOne and RepViT weights by name: timm:// names and the official release URLs, served
from 127.0.0.1, detected and converted on the fly (the machinery: test_pretrained_names)."""
from __future__ import annotations

import pytest
import timm
import torch
from official_layouts import official_mobileone_state, official_repvit_state
from safetensors.torch import save as save_safetensors
from test_convert_mobileone_repvit import randomized, timm_features
from test_pretrained_names import (assert_same_features, file_server, hub_server,  # noqa: F401
                                   isolated_caches, loaded, to_bytes)
from timm.utils.model import reparameterize_model as timm_reparameterize

from mmrep.converters import auto
from mmrep.models.pretrained import PretrainedMismatchError
from mmrep.models.backbones.mobileone import MobileOne
from mmrep.models.backbones.repvit import RepViT


def image():
    return torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def test_timm_mobileone_by_name(hub_server):  # noqa: F811
    model = randomized(timm.create_model('mobileone_s0'), seed=21)
    hub_server.add('timm/mobileone_s0.apple_in1k', 'model.safetensors',
                   save_safetensors(model.state_dict()))
    ours = loaded(MobileOne, 'timm://mobileone_s0.apple_in1k', arch='s0')
    with torch.no_grad():
        assert_same_features(timm_features(model, image()), ours(image()))


def test_official_mobileone_fused_release_url(file_server):  # noqa: F811
    """apple/ml-mobileone's ``mobileone_s0.pth.tar`` (fused) into the deploy=True backbone."""
    model = randomized(timm.create_model('mobileone_s0'), seed=22)
    expected = timm_features(model, image())
    fused = official_mobileone_state(timm_reparameterize(model).state_dict())
    url = file_server.add('/ml-research/datasets/mobileone/mobileone_s0.pth.tar', to_bytes(fused))
    ours = loaded(MobileOne, url, arch='s0', deploy=True)
    with torch.no_grad():
        assert_same_features(expected, ours(image()))


def test_official_repvit_release_url_and_timm_name(file_server, hub_server):  # noqa: F811
    model = randomized(timm.create_model('repvit_m1_1'), seed=23)
    expected = timm_features(model, image())
    url = file_server.add('/THU-MIG/RepViT/releases/download/v1.0/repvit_m1_1_distill_300e.pth',
                          to_bytes({'model': official_repvit_state(model), 'epoch': 299}))
    hub_server.add('timm/repvit_m1_1.dist_300e_in1k', 'model.safetensors',
                   save_safetensors(model.state_dict()))
    for name in (url, 'timm://repvit_m1_1.dist_300e_in1k'):
        ours = loaded(RepViT, name, arch='m1.1')
        with torch.no_grad():
            assert_same_features(expected, ours(image()))


def test_every_layout_arch_and_form_is_detected():
    """auto.detect names family, layout, arch and form of every MobileOne / RepViT state.

    Markers of different families overlap (timm's fused RepVGG and MobileOne stems
    are both ``stem.reparam_conv``, RepLKNet's and timm RepViT's blocks both
    ``stages.0.blocks.0``): the family whose keys fit an arch is the one found.
    """
    with torch.device('meta'):
        for arch in MobileOne.arch_settings:
            for deploy in (False, True):
                model = timm.create_model(f'mobileone_{arch}')
                if deploy:
                    model = timm_reparameterize(model)
                for source, state in (('timm', model.state_dict()),
                                      ('official', official_mobileone_state(model.state_dict())),
                                      ('mmrep', MobileOne(arch, deploy=deploy).state_dict())):
                    found = auto.detect(state)
                    assert found == ('mobileone', source, f'mobileone-{arch}', deploy), found
        # fused, a legacy token mixer is the same conv as a current one: m1 == m0.9, m2 == m1.1
        twins = {'m0.9': 'm1', 'm1': 'm0.9', 'm1.1': 'm2', 'm2': 'm1.1'}
        for arch in RepViT.arch_settings:
            for deploy in (False, True):
                model = timm.create_model('repvit_' + arch.replace('.', '_'))
                if deploy:
                    model.fuse()
                expected = {f'repvit-{arch}'} | ({f'repvit-{twins[arch]}'}
                                                 if deploy and arch in twins else set())
                for source, state in (('timm', model.state_dict()),
                                      ('official', official_repvit_state(model)),
                                      ('mmrep', RepViT(arch, deploy=deploy).state_dict())):
                    found = auto.detect(state)
                    assert found.family == 'repvit' and found.source == source, found
                    assert found.arch in expected and found.deploy is deploy, found


def test_timm_names_of_another_arch_or_family_are_refused_at_build_without_network():
    with pytest.raises(PretrainedMismatchError,
                       match=r'timm://repvit_m1_5\.dist_300e_in1k holds repvit-m1\.5 .* but the '
                             r'backbone is RepViT repvit-m1\.1'):
        RepViT('m1.1', init_cfg=dict(type='Pretrained',
                                     checkpoint='timm://repvit_m1_5.dist_300e_in1k'))
    with pytest.raises(PretrainedMismatchError, match='repvit.* but the backbone is MobileOne'):
        MobileOne('s0', init_cfg=dict(type='Pretrained',
                                      checkpoint='timm://repvit_m0_9.dist_300e_in1k'))
