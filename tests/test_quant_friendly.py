"""QARepVGG-style (quant_friendly) blocks: the QARepVGG structure, exact fusion, no BN left."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fusion_check import assert_fusion_exact, count_bn, max_rel_diff, randomize_bn
from hypothesis import given, settings, strategies as st
from torch import nn

from mmrep.blocks.base import ConvBN
from mmrep.blocks.repconvn import RepConvN, RepNCSP
from mmrep.blocks.repvgg import RepVGGBlock
from mmrep.models.backbones.repvgg import RepVGG
from mmrep.models.necks.rep_pafpn import RepPAFPN

# grouped blocks with and without identity (as test_repvgg.SMALL)
SMALL = dict(num_blocks=[1, 2, 2, 1], width_factor=[0.25, 0.25, 0.25, 0.25],
             group_layer_map={2: 2, 3: 2, 5: 4})


def assert_qarepvgg_layout(block, has_identity):
    """3x3 conv + BN; 1x1 conv without BN or bias; identity without BN; one BN after the sum."""
    assert isinstance(block.branch_3x3, ConvBN)
    assert isinstance(block.branch_3x3.bn, nn.modules.batchnorm._BatchNorm)
    assert type(block.branch_1x1) is nn.Conv2d and block.branch_1x1.bias is None
    assert block.branch_1x1.kernel_size == (1, 1)
    if has_identity:
        assert type(block.branch_identity) is nn.Identity
    else:
        assert block.branch_identity is None
    assert isinstance(block.post_norm, nn.modules.batchnorm._BatchNorm)
    assert count_bn(block) == 2


@pytest.mark.parametrize('in_ch, out_ch, stride, groups, use_se', [
    (8, 8, 1, 1, False),    # identity branch
    (8, 8, 1, 4, False),    # grouped identity
    (8, 16, 2, 4, False),   # downsampling, no identity
    (8, 16, 1, 2, False),   # width change, no identity
    (8, 8, 2, 2, False),    # stride 2, no identity
    (32, 32, 1, 4, True),   # SE after the post-sum BN
])
def test_block_layout_and_exact_fusion(in_ch, out_ch, stride, groups, use_se):
    block = RepVGGBlock(in_ch, out_ch, stride, groups, use_se=use_se, quant_friendly=True)
    assert_qarepvgg_layout(block, in_ch == out_ch and stride == 1)
    x = torch.randn(2, in_ch, 11, 16)
    fused = assert_fusion_exact(block, x)
    conv = fused.branch_reparam
    assert conv.groups == groups and conv.stride == (stride, stride)
    assert conv.kernel_size == (3, 3)
    # the fused form is the plain block's: a deploy=True block loads it
    deployed = RepVGGBlock(in_ch, out_ch, stride, groups, use_se=use_se, deploy=True).eval()
    deployed.load_state_dict(fused.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(deployed(x), fused(x))


def test_block_computes_the_qarepvgg_formula():
    # act(BN_post(BN_3x3(conv3x3 x) + conv1x1 x + x)), written out by hand
    block = randomize_bn(RepVGGBlock(6, 6, groups=2, quant_friendly=True)).eval()
    x = torch.randn(1, 6, 7, 9)
    b3, b1, post = block.branch_3x3, block.branch_1x1, block.post_norm
    with torch.no_grad():
        branch_sum = b3.bn(F.conv2d(x, b3.conv.weight, padding=1, groups=2)) \
            + F.conv2d(x, b1.weight, groups=2) + x
        expected = F.relu(F.batch_norm(branch_sum, post.running_mean, post.running_var,
                                       post.weight, post.bias, False, 0.0, post.eps))
        assert torch.allclose(block(x), expected, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(per_group=st.integers(1, 4), groups=st.sampled_from([1, 2, 4]),
       same_width=st.booleans(), stride=st.sampled_from([1, 2]),
       h=st.integers(1, 13), w=st.integers(1, 13), use_se=st.booleans(),
       use_identity=st.booleans())
def test_block_fusion_property(per_group, groups, same_width, stride, h, w, use_se,
                               use_identity):
    in_ch = per_group * groups
    out_ch = in_ch if same_width else 2 * in_ch
    block = RepVGGBlock(in_ch, out_ch, stride, groups, use_se=use_se,
                        use_identity=use_identity, quant_friendly=True)
    assert (block.branch_identity is not None) == (use_identity and same_width and stride == 1)
    assert_fusion_exact(block, torch.randn(2, in_ch, h, w))


def test_identity_kernel_follows_the_block_dtype():
    # the identity kernel of a float64 block is float64 (no silent float32 step)
    block = randomize_bn(RepVGGBlock(4, 4, quant_friendly=True)).double().eval()
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        expected = block(x)
        block.reparameterize()
        assert block.branch_reparam.weight.dtype == torch.float64
        assert max_rel_diff(expected, block(x)) < 1e-12


# ---------------------------------------------------------------- RepConvN / RepPAFPN


@pytest.mark.parametrize('in_ch, out_ch, stride, groups', [
    (8, 8, 1, 1), (8, 16, 2, 2), (8, 8, 2, 4)])
def test_repconvn_quant_friendly(in_ch, out_ch, stride, groups):
    block = RepConvN(in_ch, out_ch, stride, groups, quant_friendly=True)
    assert_qarepvgg_layout(block, has_identity=False)  # never an identity, as RepConvN
    assert isinstance(block.act, nn.SiLU)
    fused = assert_fusion_exact(block, torch.randn(2, in_ch, 9, 14))
    assert set(fused.state_dict()) == {'branch_reparam.weight', 'branch_reparam.bias'}


def test_rep_pafpn_quant_friendly_fuses_exactly():
    neck = RepPAFPN([24, 40, 112, 160], 16, num_outs=5, start_level=1,
                    add_extra_convs='on_input', quant_friendly=True)
    rep = [m for m in neck.modules() if isinstance(m, RepConvN)]
    assert rep and all(m.quant_friendly for m in rep)
    for m in rep:
        assert_qarepvgg_layout(m, has_identity=False)
    assert any(isinstance(m, RepNCSP) for m in neck.modules())
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, c, 96 // s, 64 // s, generator=gen)
              for c, s in zip([24, 40, 112, 160], [4, 8, 16, 32])]
    fused = assert_fusion_exact(neck, inputs)
    plain = RepPAFPN([24, 40, 112, 160], 16, num_outs=5, start_level=1,
                     add_extra_convs='on_input', deploy=True)
    assert ({k: v.shape for k, v in fused.state_dict().items()}
            == {k: v.shape for k, v in plain.state_dict().items()})


# ---------------------------------------------------------------- RepVGG backbone


@pytest.mark.parametrize('arch', list(RepVGG.arch_settings))
def test_every_arch_has_the_layout_and_fuses_to_the_deploy_structure(arch):
    with torch.device('meta'):  # structure at full size, no memory
        model = RepVGG(arch, quant_friendly=True)
        blocks = [model.stem, *(b for s in model.stages for b in s)]
        for block in blocks:
            same = (block.branch_3x3.conv.in_channels == block.branch_3x3.conv.out_channels
                    and block.branch_3x3.conv.stride == (1, 1))
            assert_qarepvgg_layout(block, same)
        assert sum(b.branch_identity is not None for b in blocks) > 0
        plain = RepVGG(arch)
        assert [b.groups for b in blocks] == [
            b.groups for b in [plain.stem, *(b for s in plain.stages for b in s)]]
        model.reparameterize()
        deployed = RepVGG(arch, deploy=True)
    assert count_bn(model) == 0
    assert ({k: v.shape for k, v in model.state_dict().items()}
            == {k: v.shape for k, v in deployed.state_dict().items()})


@pytest.mark.parametrize('arch', ['A0', SMALL, dict(SMALL, use_se=True)])
def test_arch_fuses_exactly(arch):
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    fused = assert_fusion_exact(RepVGG(arch, quant_friendly=True), x)
    deployed = RepVGG(arch, deploy=True).eval()
    deployed.load_state_dict(fused.state_dict(), strict=True)


def test_backbone_options_reach_the_post_sum_norm():
    model = RepVGG(SMALL, quant_friendly=True, frozen_stages=0, norm_eval=False).train()
    assert not model.stem.post_norm.training
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert model.stages[0][0].post_norm.training
    sync = RepVGG(SMALL, quant_friendly=True, norm_cfg=dict(type='SyncBN'))
    assert isinstance(sync.stem.post_norm, nn.SyncBatchNorm)
