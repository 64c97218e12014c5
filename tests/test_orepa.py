"""OREPA blocks and OREPA-ResNet: online kernel generation, exact fusion, deploy form."""
import math

import pytest
import torch
import torch.nn.functional as F
from fusion_check import assert_fusion_exact, count_bn, image, max_rel_diff
from hypothesis import given, settings, strategies as st

from mmrep import fusion
from mmrep.blocks.orepa import (OREPA, OREPA1x1, OREPAKernel, OREPALargeConv, frequency_prior)
from mmrep.models.backbones.orepa_resnet import OREPAResNet

# float32 sums of the same terms in another order
ONLINE_TOL = 2e-5




def randomize_generator(block, seed=0):
    """Move every learnable kernel off its initial value and give every branch a random scale.

    At the official init the prior branch has scale 0 and the identity offsets are 0, which
    would hide a wrong prior or a wrong grouping of the identity-initialised 1x1.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in block.kernel_gen.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith('scales'):
                param.copy_(noise)
            else:
                param.add_(0.3 * noise)
    return block


# ---------------------------------------------------------------- feature-space references
# Each branch run as its own sequence of convs / pools on x, then scaled and summed: what
# an OREPA conv means, written without any kernel algebra from mmrep.fusion.

def official_identity(rows, in_channels, groups):
    per_group = in_channels // groups
    kernel = torch.zeros(rows, per_group, 1, 1)
    for i in range(rows):
        kernel[i, i % per_group] = 1
    return kernel


def orepa_branches(gen, x, stride, padding):
    k, g = gen.kernel_size, gen.groups
    shift = padding - k // 2  # the 1x1 branch reads the kernel centre (negative = crop)
    first = gen.weight_1x1_kxk_first + official_identity(gen.internal_channels,
                                                         gen.in_channels, g)
    branches = [
        F.conv2d(x, gen.weight_origin, stride=stride, padding=padding, groups=g),
        F.avg_pool2d(F.conv2d(x, gen.weight_avg, groups=g), k, stride, padding,
                     count_include_pad=True),
        F.conv2d(F.conv2d(x, gen.weight_prior, groups=g), gen.prior[:, None],
                 stride=stride, padding=padding, groups=gen.out_channels),
        F.conv2d(F.conv2d(x, first, groups=g), gen.weight_1x1_kxk_second,
                 stride=stride, padding=padding, groups=g),
        F.conv2d(F.pad(x, [shift] * 4), gen.weight_1x1, stride=stride, groups=g),
        F.conv2d(F.conv2d(x, gen.weight_dw, stride=stride, padding=padding,
                          groups=gen.in_channels), gen.weight_pw, groups=g),
    ]
    return sum(scale[None, :, None, None] * out for scale, out in zip(gen.scales, branches))


def orepa_1x1_branches(gen, x, stride):
    origin = F.conv2d(x, gen.weight_origin, stride=stride)
    linear = F.conv2d(F.conv2d(x, gen.weight_first, stride=stride), gen.weight_second)
    return (gen.scales[0][None, :, None, None] * origin
            + gen.scales[1][None, :, None, None] * linear)


def large_conv_layers(gen, x, stride, padding):
    """The stack of 3x3 OREPA convs, on the input padded once (no padding in between)."""
    out = F.pad(x, [padding] * 4)
    for i, layer in enumerate(gen.layers):
        out = orepa_branches(layer, out, stride if i == len(gen.layers) - 1 else 1, 0)
    return out


def reference(block, x):
    args = block.conv_args
    if isinstance(block, OREPA):
        return orepa_branches(block.kernel_gen, x, args['stride'], args['padding'])
    if isinstance(block, OREPA1x1):
        return orepa_1x1_branches(block.kernel_gen, x, args['stride'])
    return large_conv_layers(block.kernel_gen, x, args['stride'], args['padding'])


def generated_conv(block, x):
    """What the block computes before its norm: one conv with the generated kernel."""
    args = block.conv_args
    return F.conv2d(x, block.kernel_gen(), None, args['stride'], args['padding'],
                    args['dilation'], args['groups'])


def assert_online_equals_branches(block, x):
    randomize_generator(block).train()
    expected = reference(block, x)
    assert max_rel_diff(expected, generated_conv(block, x)) <= ONLINE_TOL
    # the training forward is that one conv, then the norm in train mode, then act
    bn = block.bn
    normed = F.batch_norm(expected, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    assert max_rel_diff(block.act(normed), block(x)) <= ONLINE_TOL


def assert_deploy_twin(fused, deploy_model, *inputs):
    """The fused state dict loads strictly into the model built fused, which computes the same."""
    assert fused.state_dict().keys() == deploy_model.state_dict().keys()
    deploy_model.load_state_dict(fused.state_dict(), strict=True)
    deploy_model.eval()
    with torch.no_grad():
        assert max_rel_diff(fused(*inputs), deploy_model(*inputs)) == 0


# ---------------------------------------------------------------- new fusion formulas

@pytest.mark.parametrize('groups', [1, 2])
def test_compose_kxk_kxk_equals_the_stacked_convs(groups):
    w1, b1 = image(6, 4 // groups, 3, 3, seed=1), image(6, seed=2)
    w2, b2 = image(8, 6 // groups, 5, 3, seed=3), image(8, seed=4)
    x = image(2, 4, 9, 12)
    padded = F.pad(x, [2, 2, 3, 3])  # once, by the composite's padding (3, 2)
    stacked = F.conv2d(F.conv2d(padded, w1, b1, groups=groups), w2, b2, groups=groups)
    kernel, bias = fusion.compose_kxk_kxk((w1, b1), (w2, b2), groups)
    assert kernel.shape == (8, 4 // groups, 7, 5)
    assert max_rel_diff(stacked, F.conv2d(x, kernel, bias, padding=(3, 2),
                                          groups=groups)) < 1e-5


@pytest.mark.parametrize('groups', [1, 2])
def test_compose_dw_pw_equals_the_separable_pair(groups):
    channels, ratio, out = 4, 3, 6
    dw, b1 = image(channels * ratio, 1, 3, 3, seed=1), image(channels * ratio, seed=2)
    pw, b2 = image(out, channels * ratio // groups, 1, 1, seed=3), image(out, seed=4)
    x = image(2, channels, 7, 10)
    pair = F.conv2d(F.conv2d(x, dw, b1, padding=1, groups=channels), pw, b2, groups=groups)
    kernel, bias = fusion.compose_dw_pw((dw, b1), (pw, b2), channels, groups)
    assert max_rel_diff(pair, F.conv2d(x, kernel, bias, padding=1, groups=groups)) < 1e-5
    if groups == 1:  # the loop-free special case of compose_kxk_1x1
        dense = fusion.compose_kxk_1x1((dw, b1), (pw, b2), groups=channels)
        assert torch.allclose(dense[0], kernel, atol=1e-5)
        assert torch.allclose(dense[1], bias, atol=1e-5)
    with pytest.raises(ValueError):
        fusion.compose_dw_pw((dw, b1), (pw, b2), 5, groups)


# ---------------------------------------------------------------- init and prior

def official_k3_prior(channels):
    """The official fre_init, written out for k = 3 (the only size it fills)."""
    half = channels / 2
    prior = torch.empty(channels, 3, 3)
    for i in range(channels):
        for h in range(3):
            for w in range(3):
                if i < half:
                    prior[i, h, w] = math.cos(math.pi * (h + 0.5) * (i + 1) / 3)
                else:
                    prior[i, h, w] = math.cos(math.pi * (w + 0.5) * (i + 1 - half) / 3)
    return prior


@pytest.mark.parametrize('channels', [6, 7])
def test_frequency_prior_is_the_official_one_for_k3_and_the_same_formula_for_any_k(channels):
    assert torch.allclose(frequency_prior(channels, 3), official_k3_prior(channels), atol=1e-6)
    prior = frequency_prior(channels, 5)
    half = channels / 2
    for i in range(channels):
        for h in range(5):
            for w in range(5):
                pos, freq = ((h, i + 1) if i < half else (w, i + 1 - half))
                assert prior[i, h, w].item() == pytest.approx(
                    math.cos(math.pi * (pos + 0.5) * freq / 5), abs=1e-6)
    # channel 0 varies along rows only, the last channel along columns only
    assert torch.equal(prior[0], prior[0, :, :1].expand(5, 5))
    assert torch.equal(prior[-1], prior[-1, :1, :].expand(5, 5))
    assert not torch.allclose(prior[0, :, 0], prior[0, 0, :])


def test_official_initial_scales_and_identity_init():
    block = OREPA(4, 6, groups=2)
    gen = block.kernel_gen
    assert gen.branches == ('origin', 'avg', 'prior', '1x1_kxk', '1x1', 'dws')
    expected = torch.tensor([0.25, 0.25, 0.0, 0.5, 1.0, 0.5])[:, None].expand(6, 6)
    assert torch.equal(gen.scales.detach(), expected)
    assert not gen.weight_1x1_kxk_first.any()  # a learned offset from the identity
    assert torch.equal(gen.identity_1x1, official_identity(4, 4, 2))
    assert gen.weight_dw.shape == (32, 1, 3, 3) and gen.weight_pw.shape == (6, 16, 1, 1)
    # official: a twice wider 1x1 -> kxk branch for many groups
    wide = OREPAKernel(8, 8, 3, groups=8)
    assert wide.internal_channels == 16
    assert torch.equal(wide.identity_1x1, official_identity(16, 8, 8))
    one = OREPA1x1(4, 8).kernel_gen
    assert torch.equal(one.scales.detach(), torch.tensor([[1.0] * 8, [0.5] * 8]))
    assert torch.equal(one.weight_first.detach(), fusion.identity_kernel(4))
    assert torch.equal(OREPA1x1(8, 4).kernel_gen.weight_second.detach(),
                       fusion.identity_kernel(4))


def test_state_dict_layout_training_and_deploy():
    block = OREPA(4, 6)
    gen_keys = {'weight_origin', 'weight_avg', 'weight_prior', 'weight_1x1_kxk_first',
                'weight_1x1_kxk_second', 'weight_1x1', 'weight_dw', 'weight_pw', 'scales'}
    bn_keys = {'weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'}
    assert set(block.state_dict()) == ({f'kernel_gen.{k}' for k in gen_keys}
                                       | {f'bn.{k}' for k in bn_keys})
    assert set(OREPA(4, 6, deploy=True).state_dict()) == {'conv.weight', 'conv.bias'}
    large = OREPALargeConv(3, 4, 7)
    assert {k.split('.')[2] for k in large.state_dict() if k.startswith('kernel_gen')} == {
        '0', '1', '2'}


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match='odd'):
        OREPA(4, 4, kernel_size=4)
    with pytest.raises(ValueError, match='odd'):
        OREPALargeConv(4, 4, kernel_size=3)
    with pytest.raises(ValueError, match='groups'):
        OREPA(4, 6, groups=4)
    with pytest.raises(ValueError, match='internal_channels'):
        OREPA(4, 6, internal_channels=6)
    with pytest.raises(ValueError, match='101'):
        OREPAResNet(depth=42)


# ---------------------------------------------------------------- online == branches

@pytest.mark.parametrize('in_ch,out_ch,k,stride,groups,padding', [
    (4, 6, 3, 1, 1, None),
    (4, 6, 3, 2, 2, None),
    (6, 4, 5, 1, 2, None),
    (4, 8, 5, 2, 1, None),
    (8, 8, 3, 1, 8, None),  # depthwise: 2x wider identity-initialised 1x1
    (4, 6, 3, 1, 2, 0),  # "valid" conv: the 1x1 branch crops
])
def test_orepa_generated_kernel_equals_branches_in_feature_space(in_ch, out_ch, k, stride,
                                                                 groups, padding):
    block = OREPA(in_ch, out_ch, k, stride, padding, groups=groups, act_layer=torch.nn.ReLU)
    assert_online_equals_branches(block, image(2, in_ch, 9, 14))


@pytest.mark.parametrize('in_ch,out_ch,stride', [(4, 8, 1), (8, 4, 2), (6, 6, 2)])
def test_orepa_1x1_generated_kernel_equals_branches(in_ch, out_ch, stride):
    assert_online_equals_branches(OREPA1x1(in_ch, out_ch, stride), image(2, in_ch, 7, 10))


@pytest.mark.parametrize('k,stride,groups', [(5, 1, 1), (7, 2, 1), (7, 1, 2)])
def test_large_conv_generated_kernel_equals_stacked_3x3_convs(k, stride, groups):
    block = OREPALargeConv(4, 6, k, stride, groups=groups)
    assert len(block.kernel_gen.layers) == (k - 1) // 2
    assert block.kernel_gen().shape == (6, 4 // groups, k, k)
    assert_online_equals_branches(block, image(2, 4, 11, 16))


@pytest.mark.parametrize('make', [
    lambda: OREPA(4, 6, 3, 2, groups=2),
    lambda: OREPA1x1(4, 6),
    lambda: OREPALargeConv(3, 4, 5, 2),
])
def test_every_branch_parameter_learns(make):
    block = make().train()
    x = image(2, block.conv_args['in_channels'], 8, 11)

    def backward():
        out = block(x)
        (out * image(*out.shape, seed=1)).sum().backward()

    backward()
    for name, param in block.named_parameters():
        grad = param.grad
        assert grad is not None, name
        if name.endswith('weight_prior'):
            # official init: the prior branch starts with scale 0, so only its scale learns
            assert not grad.any(), name
        elif name.endswith('scales'):
            assert grad.abs().sum(dim=1).all(), name  # every branch's scale, prior included
        else:
            assert grad.any(), name
    # once the prior scale is off zero, its 1x1 learns too
    block.zero_grad()
    randomize_generator(block)
    backward()
    assert all(p.grad.any() for p in block.parameters())


# ---------------------------------------------------------------- fusion

@pytest.mark.parametrize('make,in_ch', [
    (lambda d: OREPA(4, 6, 3, 1, groups=2, act_layer=torch.nn.ReLU, deploy=d), 4),
    (lambda d: OREPA(4, 8, 5, 2, deploy=d), 4),
    (lambda d: OREPA(8, 8, 3, 2, groups=8, deploy=d), 8),
    (lambda d: OREPA(4, 6, 3, 1, dilation=2, deploy=d), 4),
    (lambda d: OREPA1x1(4, 8, 2, act_layer=torch.nn.ReLU, deploy=d), 4),
    (lambda d: OREPALargeConv(3, 6, 7, 2, act_layer=torch.nn.ReLU, deploy=d), 3),
    (lambda d: OREPALargeConv(4, 6, 5, 1, groups=2, deploy=d), 4),
])
def test_block_fusion_is_exact_idempotent_and_loads_into_deploy(make, in_ch):
    block = randomize_generator(make(False))
    x = image(2, in_ch, 10, 13)
    fused = assert_fusion_exact(block, x)
    assert not hasattr(fused, 'kernel_gen') and not hasattr(fused, 'bn')
    assert set(fused.state_dict()) == {'conv.weight', 'conv.bias'}
    assert_deploy_twin(fused, make(True), x)
    # reparameterize() called directly, twice: the second call changes nothing
    conv = fused.conv
    fused.reparameterize()
    assert fused.conv is conv and fused.deploy


def test_reparameterize_in_place_on_a_training_block():
    block = randomize_generator(OREPA(4, 6)).eval()
    x = image(1, 4, 6, 9)
    with torch.no_grad():
        expected = block(x)
        block.reparameterize()
        state = {k: v.clone() for k, v in block.state_dict().items()}
        block.reparameterize()
        assert all(torch.equal(state[k], v) for k, v in block.state_dict().items())
        assert max_rel_diff(expected, block(x)) < 1e-5


@settings(max_examples=12, deadline=None)
@given(in_per_group=st.integers(1, 3), out_per_group=st.integers(1, 3),
       groups=st.sampled_from([1, 2, 3]), stride=st.sampled_from([1, 2]),
       kernel_size=st.sampled_from([3, 5]), height=st.integers(3, 11),
       width=st.integers(3, 11))
def test_orepa_online_and_fused_forms_agree_on_random_shapes(in_per_group, out_per_group, groups,
                                                             stride, kernel_size, height, width):
    in_ch, out_ch = in_per_group * groups, out_per_group * groups
    block = OREPA(in_ch, out_ch, kernel_size, stride, groups=groups)
    x = image(2, in_ch, height, width)
    assert_online_equals_branches(block, x)
    assert_fusion_exact(block, x)


# ---------------------------------------------------------------- backbone

def small_resnet(depth, **kwargs):
    return OREPAResNet(depth, stem_channels=8, base_channels=8, **kwargs)


@pytest.mark.parametrize('depth,expansion', [(18, 1), (50, 4)])
def test_resnet_layout(depth, expansion):
    model = small_resnet(depth, out_indices=(0, 1, 2, 3))
    assert model.out_channels == [8 * expansion * 2 ** i for i in range(4)]
    assert isinstance(model.stem[0], OREPALargeConv) and model.stem[0].conv_args['stride'] == 2
    assert model.stem[0].conv_args['kernel_size'] == 7 and len(model.stem[0].kernel_gen.layers) == 3
    first = model.stages[1][0]
    assert first.conv1.conv_args['stride'] == (2 if depth == 18 else 1)
    if depth == 50:  # pytorch style: stride on the 3x3; strided OREPA 1x1 projection
        assert first.conv2.conv_args['stride'] == 2
        assert isinstance(first.shortcut, OREPA1x1) and first.shortcut.conv_args['stride'] == 2
    with torch.no_grad():
        outs = model.eval()(image(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [
        (1, c, 64 // s, 96 // s) for c, s in zip(model.out_channels, (4, 8, 16, 32))]


def test_resnet_frozen_stages_and_out_indices():
    model = small_resnet(18, out_indices=(1, 3), frozen_stages=1).train()
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.stages[0].parameters())
    assert all(p.requires_grad for p in model.stages[1].parameters())
    assert not model.stem[0].bn.training and model.stages[1][0].conv1.bn.training
    outs = model(image(1, 3, 32, 64))
    assert [o.shape[1] for o in outs] == [16, 64]


def test_small_resnet_trains_then_fuses_exactly():
    model = small_resnet(50).train()
    x = image(2, 3, 32, 48)
    sum(o.square().mean() for o in model(x)).backward()
    assert all(p.grad is not None for p in model.parameters())
    fused = assert_fusion_exact(model, x)
    assert_deploy_twin(fused, small_resnet(50, deploy=True), x)


@pytest.mark.parametrize('depth', [18, 34, 50, 101])
def test_full_resnet_fuses_exactly_on_non_square_input(depth):
    model = OREPAResNet(depth)
    x = image(1, 3, 64, 96)
    fused = assert_fusion_exact(model, x)
    assert count_bn(fused) == 0
    deploy_model = OREPAResNet(depth, deploy=True)
    assert_deploy_twin(fused, deploy_model, x)
    with torch.no_grad():
        outs = deploy_model(x)
    assert [tuple(o.shape[1:]) for o in outs] == [
        (c, 64 // s, 96 // s) for c, s in zip(deploy_model.out_channels, (4, 8, 16, 32))]
