"""RepVGG: the block fuses exactly; every official arch has the official shapes and fuses."""
from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from fusion_check import assert_fusion_exact, count_bn, image, max_rel_diff, randomize_bn
from hypothesis import given, settings, strategies as st
from torch import nn

from mmrep.blocks.repvgg import RepVGGBlock
from mmrep.blocks.se import SqueezeExcite
from mmrep.models.backbones.repvgg import RepVGG

# A reduced custom arch for the option tests: grouped blocks with and
# without identity (layer 2 is stage 2's stride-2 block, 3 and 5 keep their width).
SMALL = dict(num_blocks=[1, 2, 2, 1], width_factor=[0.25, 0.25, 0.25, 0.25],
             group_layer_map={2: 2, 3: 2, 5: 4})
SMALL_SE = dict(SMALL, use_se=True)


def params_of(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- block


@pytest.mark.parametrize('in_ch, out_ch, stride, groups, use_se', [
    (8, 8, 1, 1, False),    # identity branch
    (8, 8, 1, 2, False),    # grouped identity
    (8, 8, 1, 4, False),
    (8, 16, 2, 4, False),   # downsampling, no identity
    (8, 16, 1, 2, False),   # width change, no identity
    (8, 8, 2, 2, False),    # stride 2, no identity
    (32, 32, 1, 4, True),   # SE on a grouped identity block
])
def test_block_fuses_exactly(in_ch, out_ch, stride, groups, use_se):
    block = RepVGGBlock(in_ch, out_ch, stride, groups, use_se=use_se)
    assert (block.branch_identity is not None) == (in_ch == out_ch and stride == 1)
    x = torch.randn(2, in_ch, 11, 16)  # non-square, odd height
    fused = assert_fusion_exact(block, x)
    assert fused.branch_reparam.groups == groups and fused.branch_reparam.stride == (stride, stride)
    expected = {'branch_reparam.weight', 'branch_reparam.bias'}
    if use_se:
        expected |= {'se.down.weight', 'se.down.bias', 'se.up.weight', 'se.up.bias'}
    assert set(fused.state_dict()) == expected


def test_block_reparameterize_directly_and_deploy_load():
    # reparameterize() on the block itself (branches not fused first) is exact too
    block = randomize_bn(RepVGGBlock(8, 8, groups=2, use_se=True)).eval()
    x = torch.randn(1, 8, 7, 12)
    with torch.no_grad():
        expected = block(x)
        block.reparameterize()
        assert block.deploy and not hasattr(block, 'branch_3x3')
        assert max_rel_diff(expected, block(x)) < 1e-5
        deployed = RepVGGBlock(8, 8, groups=2, use_se=True, deploy=True).eval()
        deployed.load_state_dict(block.state_dict(), strict=True)
        assert torch.equal(deployed(x), block(x))


def test_identity_branch_matters():
    # a block whose conv branches are zero is act(BN(x)): the identity is really added
    block = RepVGGBlock(4, 4, groups=2).eval()
    for branch in (block.branch_3x3, block.branch_1x1):
        nn.init.zeros_(branch.conv.weight)
    randomize_bn(block)
    x = torch.randn(1, 4, 5, 6)
    with torch.no_grad():
        expected = F.relu(block.branch_identity(x) + block.branch_3x3.bn(torch.zeros_like(x))
                          + block.branch_1x1.bn(torch.zeros_like(x)))
        assert torch.allclose(block(x), expected, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(per_group=st.integers(1, 4), groups=st.sampled_from([1, 2, 4]),
       same_width=st.booleans(), stride=st.sampled_from([1, 2]),
       h=st.integers(3, 13), w=st.integers(3, 13), use_se=st.booleans())
def test_block_fusion_property(per_group, groups, same_width, stride, h, w, use_se):
    in_ch = per_group * groups
    out_ch = in_ch if same_width else 2 * in_ch
    block = RepVGGBlock(in_ch, out_ch, stride, groups, use_se=use_se)
    assert_fusion_exact(block, torch.randn(2, in_ch, h, w))


def test_se_pools_globally_on_non_square_inputs():
    se = SqueezeExcite(6, 2)
    x = torch.randn(1, 6, 9, 4)  # tall: an avg_pool2d(kernel=W) would see only a 4x4 window
    gate = torch.sigmoid(se.up(F.relu(se.down(F.adaptive_avg_pool2d(x, 1)))))
    assert torch.allclose(se(x), x * gate, atol=1e-6)
    with pytest.raises(ValueError):
        SqueezeExcite(6, 0)


# ---------------------------------------------------------------- arch table


def test_a0_outputs_strides_and_channels():
    model = RepVGG('A0').eval()
    assert model.out_channels == [48, 96, 192, 1280]
    x = image(1, 3, 64, 96)
    with torch.no_grad():
        outs = model(x)
    assert [tuple(o.shape) for o in outs] == [
        (1, c, 64 // s, 96 // s) for c, s in zip([48, 96, 192, 1280], [4, 8, 16, 32])]
    with torch.no_grad():
        picked = RepVGG('A0', out_indices=(1, 3)).eval()(x)
    assert [o.shape[1] for o in picked] == [96, 1280]


@pytest.mark.parametrize('arch, stem, widths, depths', [
    ('A0', 48, [48, 96, 192, 1280], [2, 4, 14, 1]),
    ('A1', 64, [64, 128, 256, 1280], [2, 4, 14, 1]),
    ('A2', 64, [96, 192, 384, 1408], [2, 4, 14, 1]),
    ('B0', 64, [64, 128, 256, 1280], [4, 6, 16, 1]),
    ('B1', 64, [128, 256, 512, 2048], [4, 6, 16, 1]),
    ('B2', 64, [160, 320, 640, 2560], [4, 6, 16, 1]),
    ('B3', 64, [192, 384, 768, 2560], [4, 6, 16, 1]),
    ('D2se', 64, [160, 320, 640, 2560], [8, 14, 24, 1]),
])
def test_arch_shapes(arch, stem, widths, depths):
    with torch.device('meta'):  # shapes only: no memory, no init
        model = RepVGG(arch)
    assert model.stem.branch_3x3.conv.out_channels == stem
    assert model.out_channels == widths
    assert [len(s) for s in model.stages] == depths
    assert [s[-1].branch_3x3.conv.out_channels for s in model.stages] == widths
    assert all(isinstance(b.se, SqueezeExcite) == (arch == 'D2se')
               for b in [model.stem, *model.stages[0]])


@pytest.mark.parametrize('arch, groups', [('B1g2', 2), ('B2g4', 4), ('B3g4', 4), ('B1', 1)])
def test_group_layers_are_the_official_ones(arch, groups):
    with torch.device('meta'):
        model = RepVGG(arch)
    blocks = [b for s in model.stages for b in s]  # official layer id = index + 1
    grouped = [i + 1 for i, b in enumerate(blocks) if b.groups > 1]
    assert grouped == ([] if groups == 1 else list(range(2, 27, 2)))
    assert all(b.groups == groups for i, b in enumerate(blocks) if i + 1 in grouped)
    assert model.stem.groups == 1


def test_deploy_param_counts_match_the_paper():
    # paper: A0 8.30M and B2 80.31M parameters with the 1000-class linear head
    for arch, millions in [('A0', 8.30), ('B2', 80.31)]:
        with torch.device('meta'):
            model = RepVGG(arch, deploy=True)
        head = model.out_channels[-1] * 1000 + 1000
        assert abs((params_of(model) + head) / 1e6 - millions) < 0.01


def test_unknown_arch_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        RepVGG('C7')
    for name in RepVGG.arch_settings:
        assert repr(name) in str(err.value)
    with pytest.raises(ValueError, match='width_factor'):
        RepVGG(dict(num_blocks=[1, 1, 1, 1]))
    with pytest.raises(ValueError, match='4 values'):
        RepVGG(dict(num_blocks=[1, 1, 1], width_factor=[1, 1, 1]))


def test_custom_arch_dict():
    model = RepVGG(SMALL_SE)
    assert model.out_channels == [16, 32, 64, 128]
    blocks = [b for s in model.stages for b in s]
    assert [b.groups for b in blocks] == [1, 2, 2, 1, 4, 1]
    assert all(isinstance(b.se, SqueezeExcite) for b in [model.stem, *blocks])
    assert_fusion_exact(model, image(2, 3, 64, 96))


# ---------------------------------------------------------------- every arch fuses

# Fusing a full B3/D2se (120M+ parameters) takes 10-20 s on 2 shared CPU cores, so
# by default the values are checked on the archs below 40M parameters (A*, B0 and
# the grouped B1g4) and every arch is checked for structure on the meta device.
# MMREP_TEST_ALL_ARCHS=1 checks the values of all of them.
ALL_ARCHS = list(RepVGG.arch_settings)
EXACT_ARCHS = (ALL_ARCHS if os.environ.get('MMREP_TEST_ALL_ARCHS')
               else ['A0', 'A1', 'A2', 'B0', 'B1g4'])


@pytest.mark.parametrize('arch', ALL_ARCHS)
def test_every_arch_fuses_to_the_deploy_structure(arch):
    # shapes only, at full size: fusion leaves no BN and gives the deploy=True layout
    with torch.device('meta'):
        model = RepVGG(arch)
        model.reparameterize()
        deployed = RepVGG(arch, deploy=True)
    assert count_bn(model) == 0 and model.deploy
    assert all(b.deploy for b in [model.stem, *(b for s in model.stages for b in s)])
    fused_shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert fused_shapes == {k: v.shape for k, v in deployed.state_dict().items()}


@pytest.mark.parametrize('arch', EXACT_ARCHS)
def test_arch_fuses_exactly(arch):
    # full size on a 32x48 input, fused in place (no deep copy) to stay fast
    model = randomize_bn(RepVGG(arch)).eval()
    x = image(1, 3, 32, 48)
    with torch.no_grad():
        expected = model(x)
        model.reparameterize()
        got = model(x)
    assert max_rel_diff(expected, got) <= 1e-4
    assert count_bn(model) == 0


@pytest.mark.parametrize('arch', ['A0', SMALL_SE])
def test_deploy_model_loads_fused_state_dict(arch):
    model = randomize_bn(RepVGG(arch)).eval()
    x = image(1, 3, 64, 96)
    model.reparameterize()
    deployed = RepVGG(arch, deploy=True).eval()
    deployed.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        for a, b in zip(model(x), deployed(x)):
            assert torch.equal(a, b)


def test_reparameterize_is_idempotent():
    model = randomize_bn(RepVGG(SMALL)).eval()
    model.reparameterize()
    state = copy.deepcopy(model.state_dict())
    model.switch_to_deploy()
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- OpenMMLab options


def bn_layers(module):
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_frozen_stages():
    model = RepVGG(SMALL, frozen_stages=1)
    model.train()
    frozen, free = [model.stem, model.stages[0]], list(model.stages[1:])
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in free for p in m.parameters())
    assert not any(bn.training for m in frozen for bn in bn_layers(m))
    assert all(bn.training for m in free for bn in bn_layers(m))
    stats = copy.deepcopy(model.stem.branch_3x3.bn.running_mean)
    model(image(2, 3, 32, 32))
    assert torch.equal(stats, model.stem.branch_3x3.bn.running_mean)


def test_norm_eval():
    model = RepVGG(SMALL, norm_eval=True).train()
    assert model.training and not any(bn.training for bn in bn_layers(model))
    assert RepVGG(SMALL).train().stem.branch_3x3.bn.training


def test_with_cp_same_output_and_grad():
    plain = RepVGG(SMALL_SE).train()
    ckpt = RepVGG(SMALL_SE, with_cp=True).train()
    ckpt.load_state_dict(plain.state_dict())
    results = []
    for model in (plain, ckpt):
        x = image(2, 3, 32, 48).requires_grad_()
        outs = model(x)
        sum(o.square().mean() for o in outs).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((outs, x.grad, grads))
    (outs_a, xg_a, g_a), (outs_b, xg_b, g_b) = results
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outs_a, outs_b))
    assert torch.allclose(xg_a, xg_b, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_a, g_b))


def test_syncbn_builds_and_fuses():
    model = RepVGG(SMALL, norm_cfg=dict(type='SyncBN', requires_grad=True))
    assert all(isinstance(bn, nn.SyncBatchNorm) for bn in bn_layers(model))
    assert len(bn_layers(model)) > 0
    fused = assert_fusion_exact(model, image(1, 3, 32, 48))  # eval mode: SyncBN acts as BN on CPU
    assert count_bn(fused) == 0
