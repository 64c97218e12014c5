"""RepLKNet: large-kernel blocks and the backbone fuse exactly to BN-free plain convs."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from fusion_check import assert_fusion_exact, count_bn, max_rel_diff, randomize_bn
from mmrep import reparameterize_model
from mmrep.blocks.replk import (ConvFFN, DropPath, FoldableNorm, RepLKBlock,
                                ReparamLargeKernelConv)
from mmrep.models.backbones.replknet import RepLKNet

# Full-width channels, one block pair per stage: every module kind, small cost.
SHALLOW = dict(arch='31B', layers=[1, 1, 1, 1], drop_path_rate=0.)
TINY_ARCH = dict(large_kernel_sizes=(13, 11, 9, 7), layers=(1, 2, 1, 1), channels=(8, 16, 24, 32),
                 small_kernel=3, dw_ratio=1.5, ffn_ratio=2)




def _deploy_twin_matches(model, deploy_model, x):
    """Load the fused model's weights into a model built with deploy=True; same outputs."""
    fused = assert_fusion_exact(model, x)
    deploy_model.load_state_dict(fused.state_dict(), strict=True)
    deploy_model.eval()
    with torch.no_grad():
        assert max_rel_diff(fused(x), deploy_model(x)) == 0
    assert count_bn(deploy_model) == 0


# --- ReparamLargeKernelConv -------------------------------------------------

@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('small_kernel', [5, None])
def test_large_kernel_conv_fuses_exactly(stride, small_kernel):
    conv = ReparamLargeKernelConv(6, 13, stride=stride, small_kernel=small_kernel)
    x = torch.randn(2, 6, 20, 27)
    fused = assert_fusion_exact(conv, x)
    assert sorted(fused.state_dict()) == ['lkb_reparam.bias', 'lkb_reparam.weight']
    assert fused.lkb_reparam.weight.shape == (6, 1, 13, 13)
    assert fused.lkb_reparam.stride == (stride, stride)
    assert fused(x).shape == (2, 6, -(-20 // stride), -(-27 // stride))


@settings(max_examples=25, deadline=None)
@given(channels=st.integers(1, 6), half_kernel=st.integers(1, 8), small=st.integers(0, 9),
       stride=st.integers(1, 3), height=st.integers(1, 20), width=st.integers(1, 20))
def test_large_kernel_conv_fuses_exactly_any_shape(channels, half_kernel, small, stride,
                                                   height, width):
    kernel = 2 * half_kernel + 1
    small_kernel = None if small == 0 else min(2 * small - 1, kernel)
    conv = ReparamLargeKernelConv(channels, kernel, stride, small_kernel)
    assert_fusion_exact(conv, torch.randn(2, channels, height, width))


def test_large_kernel_conv_deploy_loads_fused_weights():
    x = torch.randn(1, 4, 9, 14)
    _deploy_twin_matches(ReparamLargeKernelConv(4, 11, 2, 3),
                         ReparamLargeKernelConv(4, 11, 2, 3, deploy=True), x)


@pytest.mark.parametrize('kernel, small', [(12, 5), (7, 9), (13, 4)])
def test_large_kernel_conv_rejects_kernels_that_cannot_merge(kernel, small):
    with pytest.raises(ValueError, match='odd'):
        ReparamLargeKernelConv(4, kernel, small_kernel=small)


# --- RepLKBlock / ConvFFN ---------------------------------------------------

@pytest.mark.parametrize('small_kernel', [5, None])
def test_replk_block_fuses_exactly_to_three_convs(small_kernel):
    block = RepLKBlock(8, 12, 13, small_kernel, drop_path=0.2)
    fused = assert_fusion_exact(block, torch.randn(2, 8, 11, 17))
    assert sorted(fused.state_dict()) == [
        'large_kernel.lkb_reparam.bias', 'large_kernel.lkb_reparam.weight',
        'pw1.conv.bias', 'pw1.conv.weight', 'pw2.conv.bias', 'pw2.conv.weight']
    assert not hasattr(fused, 'prelkb_bn')


def test_conv_ffn_fuses_exactly_to_two_convs():
    fused = assert_fusion_exact(ConvFFN(8, 32, drop_path=0.2), torch.randn(2, 8, 7, 12))
    assert sorted(fused.state_dict()) == ['pw1.conv.bias', 'pw1.conv.weight',
                                          'pw2.conv.bias', 'pw2.conv.weight']


def test_block_reparameterize_alone_equals_model_fusion():
    # Calling the block's own reparameterize() (parent before children) fuses it all.
    block = randomize_bn(RepLKBlock(6, 6, 9, 3)).eval()
    x = torch.randn(1, 6, 10, 13)
    with torch.no_grad():
        expected = block(x)
        block.reparameterize()
        assert max_rel_diff(expected, block(x)) < 1e-5
    assert count_bn(block) == 0


def test_blocks_deploy_load_fused_weights():
    x = torch.randn(1, 8, 10, 15)
    _deploy_twin_matches(RepLKBlock(8, 12, 11, 5), RepLKBlock(8, 12, 11, 5, deploy=True), x)
    _deploy_twin_matches(ConvFFN(8, 16), ConvFFN(8, 16, deploy=True), x)


def test_drop_path_is_identity_in_eval_and_random_per_sample_in_training():
    drop = DropPath(0.5)
    x = torch.ones(2000, 3, 2, 2)
    assert torch.equal(drop.eval()(x), x)
    out = drop.train()(x)
    per_sample = out.flatten(1)
    # Each sample is either dropped entirely or kept and scaled by 1 / keep.
    assert torch.all((per_sample == 0).all(1) | (per_sample == 2).all(1))
    assert 0.4 < (per_sample[:, 0] == 0).float().mean() < 0.6
    with pytest.raises(ValueError):
        DropPath(1.0)


def test_block_drop_path_is_identity_in_eval():
    torch.manual_seed(0)
    with_dp = RepLKBlock(4, 4, 7, 3, drop_path=0.9)
    without = RepLKBlock(4, 4, 7, 3, drop_path=0.)
    without.load_state_dict(with_dp.state_dict())
    x = torch.randn(3, 4, 8, 9)
    with torch.no_grad():
        assert torch.equal(with_dp.eval()(x), without.eval()(x))
        assert not torch.equal(with_dp.train()(x), without.train()(x))


def test_foldable_norm_becomes_depthwise_1x1():
    fused = assert_fusion_exact(FoldableNorm(5), torch.randn(2, 5, 3, 4))
    assert fused.conv.weight.shape == (5, 1, 1, 1) and fused.conv.groups == 5


# --- RepLKNet backbone --------------------------------------------------------

def test_replknet_fuses_exactly_without_any_bn():
    model = RepLKNet(**SHALLOW)
    x = torch.randn(1, 3, 64, 96)
    fused = assert_fusion_exact(model, x)
    outs = fused(x)
    assert [o.shape[1:] for o in outs] == [(128, 16, 24), (256, 8, 12), (512, 4, 6), (1024, 2, 3)]
    assert model.out_channels == (128, 256, 512, 1024)
    assert not any(k.endswith(('running_mean', '_bn.weight')) for k in fused.state_dict())


@pytest.mark.parametrize('arch, channels, kernels, dw', [
    ('31B', (128, 256, 512, 1024), (31, 29, 27, 13), 128),
    ('31L', (192, 384, 768, 1536), (31, 29, 27, 13), 192),
    ('XL', (256, 512, 1024, 2048), (27, 27, 27, 13), 384),
])
def test_full_arch_builds_and_fuses_exactly(arch, channels, kernels, dw):
    # In place (no deep copy): RepLKNet-XL alone is 333M parameters.
    model = randomize_bn(RepLKNet(arch)).eval()
    assert [len(s) for s in model.stages] == [4, 5, 37, 5]  # transitions + 2 blocks per pair
    first = model.stages[0][0]
    assert first.pw1.conv.out_channels == dw
    assert (first.large_kernel.small_conv is None) == (arch == 'XL')
    last_lk = [stage[-2].large_kernel.lkb_origin.conv for stage in model.stages]
    assert [conv.kernel_size[0] for conv in last_lk] == list(kernels)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        reparameterize_model(model, inplace=True)
        got = model(x)
    assert max_rel_diff(expected, got) <= 1e-4
    assert count_bn(model) == 0
    assert [o.shape[1] for o in got] == list(channels) == list(model.out_channels)


def test_drop_path_rates_rise_linearly_over_block_pairs():
    model = RepLKNet(arch=TINY_ARCH, drop_path_rate=0.4)
    rates = [b.drop_path.drop_prob for s in model.stages for b in s if hasattr(b, 'drop_path')]
    assert rates == pytest.approx([0, 0, .1, .1, .2, .2, .3, .3, .4, .4])


def test_replknet_deploy_loads_fused_state_dict_strictly():
    kwargs = dict(arch=TINY_ARCH, norm_intermediate_features=True, out_indices=(0, 2, 3))
    _deploy_twin_matches(RepLKNet(**kwargs), RepLKNet(deploy=True, **kwargs),
                         torch.randn(1, 3, 40, 56))


def test_norm_intermediate_features_normalizes_outputs_only():
    model = randomize_bn(RepLKNet(arch=TINY_ARCH, norm_intermediate_features=True,
                                  out_indices=(1, 3))).eval()
    plain = RepLKNet(arch=TINY_ARCH, out_indices=(1, 3)).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith('out_norms.') for k in unexpected)
    assert sum(isinstance(m, FoldableNorm) for m in model.modules()) == 2
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        outs, raw = model(x), plain(x)
        assert model.out_channels == (16, 32) and [o.shape[1] for o in outs] == [16, 32]
        # Each returned map is the norm of the raw map; the next stage reads the raw one.
        assert torch.allclose(outs[0], model.out_norms[1](raw[0]))
        assert torch.allclose(outs[1], model.out_norms[3](raw[1]))
        assert not torch.allclose(outs[1], raw[1])
    assert_fusion_exact(model, x)


def test_syncbn_builds_and_fuses_in_eval():
    model = RepLKNet(arch=TINY_ARCH, norm_cfg=dict(type='SyncBN'), norm_intermediate_features=True)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules()) == count_bn(model) > 0
    assert_fusion_exact(model, torch.randn(1, 3, 32, 48))


def test_with_cp_gives_same_outputs_and_gradients():
    plain = RepLKNet(arch=TINY_ARCH, drop_path_rate=0.).train()
    ckpt = RepLKNet(arch=TINY_ARCH, drop_path_rate=0., with_cp=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 48)
    results = []
    for model in (plain, ckpt):
        inp = x.clone().requires_grad_()
        outs = model(inp)
        sum(o.square().mean() for o in outs).backward()
        results.append((outs, inp.grad))
    assert max_rel_diff(results[0][0], results[1][0]) < 1e-6
    assert max_rel_diff(results[0][1], results[1][1]) < 1e-5


def test_frozen_stages_freeze_their_output_norms():
    model = RepLKNet(arch=TINY_ARCH, norm_intermediate_features=True, frozen_stages=1).train()
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.stages[0].parameters())
    assert not any(p.requires_grad for p in model.out_norms[0].parameters())
    assert not model.out_norms[0].training and model.out_norms[1].training
    assert all(p.requires_grad for p in model.out_norms[1].parameters())


def test_invalid_configs_raise():
    with pytest.raises(ValueError, match="'31B'"):
        RepLKNet(arch='31M')
    with pytest.raises(ValueError, match='layers'):
        RepLKNet(arch='31B', layers=[2, 2, 2])
    with pytest.raises(ValueError, match='keys'):
        RepLKNet(arch=dict(channels=(8, 16, 24, 32)))
