"""RepGhost blocks and the RepGhostNet backbone: exact fusion, deploy form, mmdet options."""
import pytest
import torch
import torch.nn.functional as F
from fusion_check import assert_fusion_exact, count_bn, image, max_rel_diff, randomize_bn
from hypothesis import given, settings, strategies as st
from torch import nn

from mmrep import reparameterize_model
from mmrep.blocks.repghost import (HardSigmoidSE, RepGhostBottleneck, RepGhostModule,
                                   make_divisible)
from mmrep.models.backbones import base as backbone_base
from mmrep.models.backbones.repghostnet import RepGhostNet

# Stage output channels per width, from the official model (make_divisible(c * w, 4)).
STAGE_CHANNELS = {
    0.5: (12, 20, 56, 80),
    1.0: (24, 40, 112, 160),
    1.3: (32, 52, 144, 208),
    1.5: (36, 60, 168, 240),
    2.0: (48, 80, 224, 320),
}




def assert_deploy_twin(fused, deploy_model, *inputs):
    """The fused state dict loads strictly into the model built fused, which computes the same."""
    assert fused.state_dict().keys() == deploy_model.state_dict().keys()
    deploy_model.load_state_dict(fused.state_dict(), strict=True)
    deploy_model.eval()
    with torch.no_grad():
        assert max_rel_diff(fused(*inputs), deploy_model(*inputs)) == 0


def test_make_divisible_follows_the_official_rounding():
    assert make_divisible(31.2, 4) == 32  # nearest multiple
    assert make_divisible(145.6, 4) == 144
    assert make_divisible(13.92, 4) == 16  # 12 would lose more than 10%
    assert make_divisible(1.0, 4) == 4  # never below the divisor
    assert make_divisible(60 * 0.25, 4) == 16  # SE of a 60-channel block


def test_hard_sigmoid_se_formula_on_non_square_input():
    se = HardSigmoidSE(6, 4)
    x = image(2, 6, 5, 9)
    pooled = x.mean((2, 3), keepdim=True)
    gate = se.conv_expand(F.relu(se.conv_reduce(pooled)))
    expected = x * torch.clamp(gate + 3, 0, 6) / 6
    assert torch.allclose(se(x), expected, atol=1e-6)
    assert se.conv_reduce.out_channels == 4


@pytest.mark.parametrize('relu', [True, False])
@pytest.mark.parametrize('dw_size', [3, 5])
def test_ghost_module_fuses_exactly(relu, dw_size):
    module = RepGhostModule(5, 8, dw_size=dw_size, relu=relu)
    x = image(2, 5, 7, 11)
    fused = assert_fusion_exact(module, x)
    assert isinstance(fused.cheap, nn.Conv2d)
    assert fused.cheap.groups == 8 and fused.cheap.kernel_size == (dw_size, dw_size)
    assert not hasattr(fused, 'fusion_bn')
    assert_deploy_twin(fused, RepGhostModule(5, 8, dw_size=dw_size, relu=relu, deploy=True), x)


def test_ghost_module_state_dict_layout():
    train_keys = set(RepGhostModule(4, 6).state_dict())
    assert {'primary.conv.weight', 'primary.bn.running_var', 'cheap.conv.weight',
            'cheap.bn.weight', 'fusion_bn.running_mean'} <= train_keys
    assert set(RepGhostModule(4, 6, deploy=True).state_dict()) == {
        'primary.conv.weight', 'primary.conv.bias', 'cheap.weight', 'cheap.bias'}


def test_ghost_module_reparameterize_alone_fuses_its_primary_too():
    module = randomize_bn(RepGhostModule(3, 4)).eval()
    x = image(1, 3, 6, 10)
    with torch.no_grad():
        expected = module(x)
        module.reparameterize()
        assert count_bn(module) == 0 and module.primary.deploy
        assert max_rel_diff(expected, module(x)) < 1e-5
        module.reparameterize()  # no-op once fused
        assert max_rel_diff(expected, module(x)) < 1e-5


@settings(max_examples=8, deadline=None)
@given(cin=st.integers(1, 8), cout=st.integers(1, 8), h=st.integers(3, 12),
       w=st.integers(3, 12), relu=st.booleans())
def test_ghost_module_fuses_exactly_for_any_shape(cin, cout, h, w, relu):
    assert_fusion_exact(RepGhostModule(cin, cout, relu=relu), image(1, cin, h, w))


@pytest.mark.parametrize('cin,mid,cout,kernel,stride,se_ratio', [
    (8, 16, 8, 3, 1, 0.),  # identity shortcut
    (8, 16, 8, 5, 1, 0.25),  # identity shortcut + SE
    (8, 16, 12, 3, 1, 0.),  # projection for channels
    (8, 16, 8, 3, 2, 0.),  # projection for stride
    (6, 20, 10, 5, 2, 0.25),  # downsampling + SE
])
def test_bottleneck_fuses_exactly(cin, mid, cout, kernel, stride, se_ratio):
    block = RepGhostBottleneck(cin, mid, cout, kernel, stride, se_ratio)
    x = image(2, cin, 9, 14)
    fused = assert_fusion_exact(block, x)
    assert_deploy_twin(fused, RepGhostBottleneck(cin, mid, cout, kernel, stride, se_ratio,
                                                 deploy=True), x)


def test_bottleneck_structure():
    plain = RepGhostBottleneck(8, 16, 8)
    assert isinstance(plain.shortcut, nn.Identity) and isinstance(plain.conv_dw, nn.Identity)
    assert isinstance(plain.se, nn.Identity)
    down = RepGhostBottleneck(8, 20, 12, 5, stride=2, se_ratio=0.25)
    assert down.conv_dw.conv.stride == (2, 2) and down.conv_dw.conv.groups == 20
    assert down.se.conv_reduce.out_channels == make_divisible(20 * 0.25, 4) == 8
    dw, pw = down.shortcut
    assert dw.conv.groups == 8 and dw.conv.stride == (2, 2) and dw.conv.kernel_size == (5, 5)
    assert pw.conv.kernel_size == (1, 1) and pw.conv.out_channels == 12
    assert down(image(1, 8, 9, 14)).shape == (1, 12, 5, 7)


@settings(max_examples=10, deadline=None)
@given(cin=st.integers(1, 8), mid=st.integers(1, 12), cout=st.integers(1, 8),
       h=st.integers(4, 13), w=st.integers(4, 13), stride=st.sampled_from([1, 2]),
       kernel=st.sampled_from([3, 5]), se_ratio=st.sampled_from([0., 0.25]))
def test_bottleneck_fuses_exactly_for_any_shape(cin, mid, cout, h, w, stride, kernel, se_ratio):
    block = RepGhostBottleneck(cin, mid, cout, kernel, stride, se_ratio)
    assert_fusion_exact(block, image(1, cin, h, w))


@pytest.mark.parametrize('widen_factor', RepGhostNet.WIDEN_FACTORS)
def test_every_width_fuses_exactly_without_any_bn_left(widen_factor):
    model = RepGhostNet(widen_factor)
    x = image(1, 3, 64, 96)
    fused = assert_fusion_exact(model, x)  # also checks: no BatchNorm left
    assert count_bn(model) > 0 and count_bn(fused) == 0
    with torch.no_grad():
        outs = fused(x)
    assert [o.shape[1] for o in outs] == list(model.out_channels)
    assert [o.shape[2:] for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert_deploy_twin(fused, RepGhostNet(widen_factor, deploy=True), x)


@pytest.mark.parametrize('widen_factor,channels', sorted(STAGE_CHANNELS.items()))
def test_stage_channels_per_width(widen_factor, channels):
    assert RepGhostNet(widen_factor).out_channels == channels


def test_architecture_matches_the_official_table():
    model = RepGhostNet(1.0)
    assert [len(stage) for stage in model.stages] == [3, 2, 6, 5]
    assert model.stem.conv.out_channels == 16 and model.stem.conv.stride == (2, 2)
    block = model.stages[2][4]  # official blocks.6.3: k3, exp 240, c 112, SE 0.25
    assert block.ghost1.primary.conv.out_channels == 240
    assert block.se.conv_reduce.out_channels == 60
    assert block.ghost2.primary.conv.out_channels == 112
    assert model.stages[3][0].conv_dw.conv.kernel_size == (5, 5)
    strides = [blk.conv_dw.conv.stride[0] for stage in model.stages for blk in stage
               if not isinstance(blk.conv_dw, nn.Identity)]
    assert strides == [2, 2, 2, 2]
    wide = RepGhostNet(1.3)
    assert wide.stem.conv.out_channels == 20  # make_divisible(16 * 1.3, 4)


def test_unknown_width_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r'0\.58.*1\.11.*2\.0'):
        RepGhostNet(0.75)


def test_out_indices_select_outputs():
    model = RepGhostNet(0.5, out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = model(image(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == [20, 80]


def test_frozen_stages_freeze_stem_and_first_stages():
    model = RepGhostNet(0.5, frozen_stages=1)
    model.train()
    for module in (model.stem, model.stages[0]):
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    assert model.stages[1].training
    assert all(p.requires_grad for p in model.stages[1].parameters())


def test_norm_eval_keeps_every_bn_in_eval_mode():
    model = RepGhostNet(0.5, norm_eval=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(not bn.training for bn in bns)
    assert model.stages[0][0].ghost1.training
    before = bns[0].running_mean.clone()
    model(image(2, 3, 32, 48))
    assert torch.equal(before, bns[0].running_mean)


def test_with_cp_checkpoints_every_block_and_keeps_outputs(monkeypatch):
    x = image(2, 3, 32, 48).requires_grad_()
    model = RepGhostNet(0.5, with_cp=True)
    reference = RepGhostNet(0.5)
    reference.load_state_dict(model.state_dict())
    calls = []
    real = backbone_base.cp.checkpoint
    monkeypatch.setattr(backbone_base.cp, 'checkpoint',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    outs = model(x)
    assert len(calls) == 1 + sum(len(stage) for stage in model.stages)
    sum(o.sum() for o in outs).backward()
    assert x.grad is not None and model.stem.conv.weight.grad is not None
    assert max_rel_diff(reference(x), outs) < 1e-5


def test_syncbn_builds_and_fuses_in_eval():
    model = RepGhostNet(0.5, norm_cfg=dict(type='SyncBN'))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert_fusion_exact(model, image(1, 3, 32, 64))


def test_backbone_reparameterize_in_place_is_idempotent():
    model = randomize_bn(RepGhostNet(0.5)).eval()
    x = image(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        model.reparameterize()
        assert model.deploy and count_bn(model) == 0
        state = {k: v.clone() for k, v in model.state_dict().items()}
        model.switch_to_deploy()
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        assert max_rel_diff(expected, model(x)) < 1e-4
        copy = reparameterize_model(model)  # fusing a fused model copies it unchanged
        assert copy is not model and max_rel_diff(expected, copy(x)) < 1e-4
