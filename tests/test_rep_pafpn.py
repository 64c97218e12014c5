"""RepConvN has no identity branch and fuses exactly; RepPAFPN: FPN's interface, exact fusion."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fusion_check import assert_fusion_exact, count_bn, max_rel_diff, randomize_bn
from hypothesis import given, settings, strategies as st
from torch import nn

from mmrep.blocks.base import ConvBN
from mmrep.blocks.repconvn import RepConvN, RepNBottleneck, RepNCSP
from mmrep.models.necks.rep_pafpn import RepPAFPN

# RepGhostNet 1.0x widths at strides 4/8/16/32
GHOST_CHANNELS = [24, 40, 112, 160]
STRIDES = [4, 8, 16, 32]
OUT = 16




def features(channels=GHOST_CHANNELS, h=128, w=192, seed=0):
    """Backbone-like maps of a non-square ``h x w`` image, strides 4/8/16/32."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, c, -(-h // s), -(-w // s), generator=gen)
            for c, s in zip(channels, STRIDES)]


def retinanet_neck(**kwargs):
    return RepPAFPN(GHOST_CHANNELS, OUT, num_outs=5, start_level=1,
                    add_extra_convs=kwargs.pop('add_extra_convs', 'on_input'), **kwargs)


def assert_only_repconvn_3x3(model):
    """Every 3x3 conv sits inside a RepConvN; every conv is 3x3 or 1x1."""
    inside = {id(m) for block in model.modules() if isinstance(block, RepConvN)
              for m in block.modules()}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    for conv in convs:
        assert conv.kernel_size in ((3, 3), (1, 1))
        if conv.kernel_size == (3, 3):
            assert id(conv) in inside


def assert_two_branches(block):
    """A training-form RepConvN: a 3x3 ConvBN and a 1x1 ConvBN, nothing else with weights."""
    children = dict(block.named_children())
    assert set(children) == {'branch_3x3', 'branch_1x1', 'act'}
    assert isinstance(children['branch_3x3'], ConvBN)
    assert isinstance(children['branch_1x1'], ConvBN)
    assert children['branch_3x3'].conv.kernel_size == (3, 3)
    assert children['branch_1x1'].conv.kernel_size == (1, 1)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in children.values())


# ---------------------------------------------------------------- RepConvN


@pytest.mark.parametrize('in_ch, out_ch, stride, groups, act', [
    (8, 8, 1, 1, nn.SiLU),   # in == out, stride 1: still no identity
    (8, 8, 1, 2, nn.ReLU),
    (8, 16, 2, 2, nn.SiLU),
    (6, 12, 2, 1, nn.ReLU),
    (8, 8, 2, 4, nn.SiLU),
])
def test_repconvn_fuses_exactly(in_ch, out_ch, stride, groups, act):
    block = RepConvN(in_ch, out_ch, stride, groups, act_layer=act)
    assert_two_branches(block)
    x = torch.randn(2, in_ch, 11, 16)  # non-square, odd height
    fused = assert_fusion_exact(block, x)
    conv = fused.branch_reparam
    assert conv.kernel_size == (3, 3) and conv.groups == groups
    assert conv.stride == (stride, stride)
    assert set(fused.state_dict()) == {'branch_reparam.weight', 'branch_reparam.bias'}
    assert isinstance(fused.act, act)


@settings(max_examples=15, deadline=None)
@given(per_group=st.integers(1, 4), out_per_group=st.integers(1, 4),
       groups=st.sampled_from([1, 2, 3]),
       stride=st.sampled_from([1, 2]), h=st.integers(1, 13), w=st.integers(1, 13),
       relu=st.booleans())
def test_repconvn_fuses_exactly_any_shape(per_group, out_per_group, groups, stride, h, w, relu):
    block = RepConvN(per_group * groups, out_per_group * groups, stride, groups,
                     act_layer=nn.ReLU if relu else nn.SiLU)
    assert_fusion_exact(block, torch.randn(1, per_group * groups, h, w))


def test_repconvn_has_no_identity_even_when_it_could():
    # with both conv kernels zero the output cannot depend on x: no identity path adds x
    block = RepConvN(8, 8).eval()
    assert_two_branches(block)
    for branch in (block.branch_3x3, block.branch_1x1):
        nn.init.zeros_(branch.conv.weight)
    randomize_bn(block)
    with torch.no_grad():
        a, b = block(torch.randn(1, 8, 5, 7)), block(torch.randn(1, 8, 5, 7))
    assert torch.equal(a, b)


def test_repconvn_reparameterize_directly_and_deploy_load():
    block = randomize_bn(RepConvN(8, 12, stride=2, groups=4)).eval()
    x = torch.randn(1, 8, 9, 14)
    with torch.no_grad():
        expected = block(x)
        block.reparameterize()
        assert block.deploy and not hasattr(block, 'branch_3x3')
        assert max_rel_diff(expected, block(x)) < 1e-5
        deployed = RepConvN(8, 12, stride=2, groups=4, deploy=True).eval()
        deployed.load_state_dict(block.state_dict(), strict=True)
        assert torch.equal(deployed(x), block(x))


# ---------------------------------------------------------------- CSP blocks


def test_bottleneck_residual_only_when_widths_agree():
    same = RepNBottleneck(8, 8).eval()
    assert same.add_identity and not RepNBottleneck(8, 16).add_identity
    assert not RepNBottleneck(8, 8, shortcut=False).add_identity
    randomize_bn(same)
    x = torch.randn(1, 8, 6, 9)
    with torch.no_grad():
        assert torch.allclose(same(x), x + same.conv2(same.conv1(x)))
    assert_two_branches(same.conv1)
    assert_two_branches(same.conv2)


@pytest.mark.parametrize('in_ch, out_ch, num_blocks, shortcut', [
    (16, 8, 1, True), (8, 8, 2, True), (12, 16, 2, False)])
def test_repncsp_fuses_exactly(in_ch, out_ch, num_blocks, shortcut):
    block = RepNCSP(in_ch, out_ch, num_blocks, shortcut)
    assert len(block.blocks) == num_blocks
    assert_only_repconvn_3x3(block)
    fused = assert_fusion_exact(block, torch.randn(2, in_ch, 10, 15))
    assert_only_repconvn_3x3(fused)


# ---------------------------------------------------------------- RepPAFPN


def test_retinanet_setting_strides_8_to_128_and_fuses_exactly():
    neck = retinanet_neck()
    for block in neck.modules():
        if isinstance(block, RepConvN):
            assert_two_branches(block)
    assert_only_repconvn_3x3(neck)
    inputs = features()  # 128 x 192 image
    fused = assert_fusion_exact(neck, inputs)
    outs = fused(inputs)
    assert len(outs) == 5
    for out, stride in zip(outs, (8, 16, 32, 64, 128)):
        assert out.shape == (1, OUT, -(-128 // stride), -(-192 // stride))
    assert count_bn(fused) == 0
    assert_only_repconvn_3x3(fused)


def test_mask_rcnn_setting_max_pools_the_extra_level():
    neck = RepPAFPN(GHOST_CHANNELS, OUT, num_outs=5)
    assert len(neck.extra_convs) == 0
    inputs = features()
    fused = assert_fusion_exact(neck, inputs)
    with torch.no_grad():
        outs = fused(inputs)
    assert [o.shape[-2:] for o in outs] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    assert torch.equal(outs[4], F.max_pool2d(outs[3], 1, stride=2))


@pytest.mark.parametrize('option, relu_before', [
    (True, False), ('on_input', False), ('on_lateral', False), ('on_output', True)])
def test_each_extra_conv_source(option, relu_before):
    neck = retinanet_neck(add_extra_convs=option, relu_before_extra_convs=relu_before).eval()
    source = {'on_lateral': 'lateral', 'on_output': 'output'}.get(option, 'input')
    assert len(neck.extra_convs) == 2
    first = neck.extra_convs[0].branch_3x3.conv
    assert first.in_channels == (GHOST_CHANNELS[-1] if source == 'input' else OUT)
    seen = {}
    neck.extra_convs[0].register_forward_hook(lambda m, args, out: seen.update(extra=args[0]))
    neck.lateral_convs[-1].register_forward_hook(lambda m, args, out: seen.update(lateral=out))
    inputs = features()
    randomize_bn(neck)
    with torch.no_grad():
        outs = neck(inputs)
    expected = {'input': inputs[-1], 'lateral': seen['lateral'], 'output': outs[2]}[source]
    assert torch.equal(seen['extra'], expected)
    assert [o.shape[-2:] for o in outs][3:] == [(2, 3), (1, 2)]
    assert_fusion_exact(neck, inputs)


def test_end_level_and_bad_settings():
    neck = RepPAFPN(GHOST_CHANNELS, OUT, num_outs=2, start_level=1, end_level=2)
    inputs = features(h=64, w=96)
    outs = assert_fusion_exact(neck, inputs)(inputs)
    assert [o.shape[-2:] for o in outs] == [(8, 12), (4, 6)]
    with pytest.raises(ValueError, match='num_outs'):
        RepPAFPN(GHOST_CHANNELS, OUT, num_outs=3, start_level=1, end_level=2)
    with pytest.raises(ValueError, match='num_outs'):
        RepPAFPN(GHOST_CHANNELS, OUT, num_outs=2)
    with pytest.raises(ValueError, match='on_lateral'):
        RepPAFPN(GHOST_CHANNELS, OUT, num_outs=5, add_extra_convs='on_top')
    with pytest.raises(ValueError, match='SiLU'):
        RepPAFPN(GHOST_CHANNELS, OUT, num_outs=4, act_cfg=dict(type='GELU'))


def test_channel_mismatch_names_both_lists():
    neck = RepPAFPN(GHOST_CHANNELS, OUT, num_outs=5, start_level=1, add_extra_convs='on_input')
    repvgg_a0 = [48, 96, 192, 1280]
    with pytest.raises(ValueError, match=r'\[24, 40, 112, 160\].*\[48, 96, 192, 1280\]'):
        neck(features(repvgg_a0, 64, 64))
    with pytest.raises(ValueError, match=r'\[24, 40, 112, 160\].*\[40, 112, 160\]'):
        neck(features(GHOST_CHANNELS, 64, 64)[1:])


def test_relu_option_and_sync_bn():
    neck = RepPAFPN([8, 16, 24], OUT, num_outs=3, act_cfg=dict(type='ReLU'),
                    norm_cfg=dict(type='SyncBN'))
    assert not any(isinstance(m, nn.SiLU) for m in neck.modules())
    assert any(isinstance(m, nn.ReLU) for m in neck.modules())
    assert any(isinstance(m, nn.SyncBatchNorm) for m in neck.modules())
    assert_fusion_exact(neck, features([8, 16, 24], 64, 96))


def test_floored_backbone_sizes():
    # a backbone that floors odd sizes (15x23 -> 7x11 -> 3x5): bottom-up maps are resized
    sizes = [(15, 23), (7, 11), (3, 5)]
    inputs = [torch.randn(1, c, h, w) for c, (h, w) in zip([8, 16, 24], sizes)]
    neck = RepPAFPN([8, 16, 24], OUT, num_outs=4)
    outs = assert_fusion_exact(neck, inputs)(inputs)
    assert [o.shape[-2:] for o in outs] == sizes + [(2, 3)]


def test_deploy_neck_loads_fused_state_dict_and_switch_to_deploy():
    neck = randomize_bn(retinanet_neck(num_csp_blocks=2)).eval()
    inputs = features(h=64, w=96)
    with torch.no_grad():
        expected = neck(inputs)
        neck.switch_to_deploy()
        assert neck.deploy and count_bn(neck) == 0
        state = {k: v.clone() for k, v in neck.state_dict().items()}
        neck.reparameterize()  # a second fusion changes nothing
        assert state.keys() == neck.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in neck.state_dict().items())
        assert max_rel_diff(expected, neck(inputs)) < 1e-4
        deployed = retinanet_neck(num_csp_blocks=2, deploy=True).eval()
        deployed.load_state_dict(neck.state_dict(), strict=True)
        assert count_bn(deployed) == 0
        assert max_rel_diff(neck(inputs), deployed(inputs)) == 0
