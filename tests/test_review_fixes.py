"""Regression tests for the review's bugs (issue 10, section 2) that need no training run,
and the training-mode warning of reparameterize_model."""
import copy
import warnings

import pytest
import torch
from torch import nn

import mmrep
from fusion_check import count_bn, image, randomize_bn
from mmrep.models.backbones.orepa_resnet import OREPAResNet
from mmrep.models.backbones.repghostnet import RepGhostNet
from mmrep.models.backbones.replknet import RepLKNet
from mmrep.models.backbones.repvgg import RepVGG
from mmrep.models.necks.rep_pafpn import RepPAFPN

SMALL_VGG = dict(num_blocks=[1, 1, 1, 1], width_factor=[0.25, 0.25, 0.25, 0.25])
SMALL_LK = dict(arch=dict(large_kernel_sizes=(7, 7, 5, 5), layers=(1, 1, 1, 1),
                          channels=(8, 16, 16, 16), small_kernel=3, dw_ratio=1, ffn_ratio=2),
                norm_intermediate_features=True, drop_path_rate=0.0)  # deterministic
BACKBONES = {
    'RepVGG': lambda **kw: RepVGG(SMALL_VGG, **kw),
    'RepGhostNet': lambda **kw: RepGhostNet(widen_factor=0.5, **kw),
    'OREPAResNet': lambda **kw: OREPAResNet(depth=18, stem_channels=8, base_channels=8, **kw),
    'RepLKNet': lambda **kw: RepLKNet(**SMALL_LK, **kw),
}


# bug 1: frozen stages must be frozen when the model is built, before DDP wraps it
@pytest.mark.parametrize('name', sorted(BACKBONES))
@pytest.mark.parametrize('frozen_stages', [0, 2])
def test_frozen_stages_have_no_grad_right_after_construction(name, frozen_stages):
    model = BACKBONES[name](frozen_stages=frozen_stages)
    frozen = [model.stem] + list(model.stages[:frozen_stages])
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in model.stages[frozen_stages:] for p in m.parameters())


# bug 6: activation checkpointing must not update BatchNorm running statistics twice
@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_with_cp_updates_bn_statistics_once(name):
    plain = BACKBONES[name]().train()
    checkpointed = BACKBONES[name](with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    for model in (plain, checkpointed):
        x = image(2, 3, 32, 48).requires_grad_()
        sum(o.square().mean() for o in model(x)).backward()
    state_a, state_b = plain.state_dict(), checkpointed.state_dict()
    tracked = [k for k in state_a if k.endswith('num_batches_tracked')]
    assert tracked and all(state_a[k].item() == state_b[k].item() == 1 for k in tracked)
    for key in state_a:
        if key.endswith(('running_mean', 'running_var')):
            assert torch.allclose(state_a[key], state_b[key], atol=1e-6), key
    # the batch statistics are still used for the recomputed forward: gradients agree
    for (key, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), key


# bug 7: bf16/fp16 fusion is done in float32 and cast back to the conv's dtype
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_low_precision_model_fuses_in_float32(dtype):
    low = randomize_bn(RepVGG(SMALL_VGG)).eval().to(dtype)
    reference = mmrep.reparameterize_model(copy.deepcopy(low).float())  # fused in float32
    fused = mmrep.reparameterize_model(low)
    got, want = fused.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for key, value in got.items():
        assert value.dtype == (dtype if want[key].is_floating_point() else want[key].dtype), key
        # fusion in float32 then one rounding: exactly the float32 result, cast
        assert torch.equal(value, want[key].to(value.dtype)), key


def test_low_precision_model_with_float32_bn_fuses_to_low_precision_convs():
    model = randomize_bn(RepVGG(SMALL_VGG)).eval().to(torch.bfloat16)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.float()  # mixed precision keeps the norms in float32
    x = image(1, 3, 32, 48).to(torch.bfloat16)
    with torch.no_grad():
        expected = model(x)
        fused = mmrep.reparameterize_model(model)
        got = fused(x)  # a float32 fused bias would fail: input bf16, bias float
    assert count_bn(fused) == 0
    assert all(p.dtype == torch.bfloat16 for p in fused.parameters())
    for a, b in zip(expected, got):
        assert (a.float() - b.float()).abs().max() <= 0.05 * a.float().abs().max()


# bug 9: norms that fusion cannot fold are refused when the model is built
@pytest.mark.parametrize('norm_cfg, named', [
    (dict(type='GN', num_groups=2), 'GroupNorm'),
    (dict(type='LN'), 'LayerNorm'),
    (dict(type='BN', track_running_stats=False), 'track_running_stats=False'),
])
def test_unfusable_norm_is_refused_at_construction(norm_cfg, named):
    for build in (lambda: RepVGG(SMALL_VGG, norm_cfg=norm_cfg),
                  lambda: RepGhostNet(widen_factor=0.5, norm_cfg=norm_cfg),
                  lambda: RepLKNet(**SMALL_LK, norm_cfg=norm_cfg),
                  lambda: RepPAFPN([8, 16], 8, 2, norm_cfg=norm_cfg)):
        with pytest.raises(ValueError, match=named):
            build()


def test_syncbn_is_accepted():
    assert RepVGG(SMALL_VGG, norm_cfg=dict(type='SyncBN')) is not None


# section 3: reparameterize_model on a model in training mode
def test_training_mode_fusion_warns_and_copy_is_returned_in_eval_mode():
    model = randomize_bn(RepVGG(SMALL_VGG)).train()
    with pytest.warns(UserWarning, match='training mode'):
        fused = mmrep.reparameterize_model(model)
    assert not fused.training and model.training
    with pytest.warns(UserWarning, match='only in eval mode'):
        mmrep.reparameterize_model(copy.deepcopy(model), inplace=True)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        mmrep.reparameterize_model(model.eval())  # eval mode: no warning


def test_load_checked_is_strict_about_shapes_and_every_key(tmp_path):
    from mmrep.engine.deploy_utils import CheckpointMismatchError, load_checked
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    path = str(tmp_path / 'ckpt.pth')
    state = model.state_dict()
    state['0.weight'] = torch.zeros(5, 3, 3, 3)
    torch.save({'state_dict': state}, path)
    with pytest.raises(CheckpointMismatchError, match=r'0.weight: \[5, 3, 3, 3\] instead of \[4'):
        load_checked(model, path)
    state = model.state_dict()
    state.pop('1.num_batches_tracked')  # Pretrained loading allows this; load_checked does not
    torch.save({'state_dict': state}, path)
    with pytest.raises(CheckpointMismatchError, match=r'1 missing key \(1.num_batches_tracked\)'):
        load_checked(model, path)
