"""MobileOne and RepViT: exact fusion of every block and arch, official structure, mmdet options."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from fusion_check import assert_fusion_exact, count_bn, image, max_rel_diff, randomize_bn
from hypothesis import given, settings, strategies as st
from torch import nn

from mmrep import reparameterize_model
from mmrep.blocks.base import make_divisible
from mmrep.blocks.mobileone import MobileOneBlock
from mmrep.blocks.repvit import RepVGGDW, RepViTBlock, RepViTDownsample, se_channels
from mmrep.blocks.se import SqueezeExcite
from mmrep.models.backbones import base as backbone_base
from mmrep.models.backbones.mobileone import MobileOne
from mmrep.models.backbones.repvit import RepViT

# Reduced custom archs for the option tests: SE, several conv branches, pre-blocks.
SMALL_MOBILEONE = dict(num_blocks=[1, 2, 1, 1], width_factor=[0.25, 0.25, 0.25, 0.25],
                       num_conv_branches=2, num_se_blocks=[0, 1, 0, 1])
SMALL_REPVIT = dict(widths=[16, 24, 32, 40], depths=[1, 2, 1, 1])
SMALL = {MobileOne: SMALL_MOBILEONE, RepViT: SMALL_REPVIT}
FAMILIES = [MobileOne, RepViT]


def deploy_twin(fused: nn.Module, deploy_model: nn.Module, *inputs) -> None:
    """The fused state dict loads strictly into the model built fused, which computes the same."""
    assert fused.state_dict().keys() == deploy_model.state_dict().keys()
    deploy_model.load_state_dict(fused.state_dict(), strict=True)
    with torch.no_grad():
        assert max_rel_diff(fused(*inputs), deploy_model.eval()(*inputs)) == 0


def bn_layers(module):
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# ---------------------------------------------------------------- MobileOne block


@pytest.mark.parametrize('cin, cout, kernel, stride, groups, branches, use_se', [
    (8, 8, 3, 1, 8, 4, False),    # depthwise with identity, S0's four branches
    (8, 8, 3, 2, 8, 1, False),    # depthwise stride 2: no identity
    (8, 16, 1, 1, 1, 4, False),   # pointwise widening: no identity, no scale branch
    (16, 16, 1, 1, 1, 1, True),   # pointwise with identity and SE (S4)
    (16, 16, 3, 1, 16, 2, True),  # depthwise with SE
    (3, 12, 3, 2, 1, 1, False),   # the stem
])
def test_mobileone_block_fuses_exactly(cin, cout, kernel, stride, groups, branches, use_se):
    block = MobileOneBlock(cin, cout, kernel, stride, groups, branches, use_se)
    assert len(block.branch_convs) == branches
    assert (block.branch_scale is not None) == (kernel > 1)
    assert (block.branch_identity is not None) == (cin == cout and stride == 1)
    x = image(2, cin, 11, 14)
    fused = assert_fusion_exact(block, x)
    conv = fused.branch_reparam
    assert conv.kernel_size == (kernel, kernel) and conv.groups == groups
    assert conv.stride == (stride, stride)
    deploy_twin(fused, MobileOneBlock(cin, cout, kernel, stride, groups, branches, use_se,
                                      deploy=True), x)


def test_mobileone_block_formula():
    block = randomize_bn(MobileOneBlock(4, 4, 3, groups=4, num_conv_branches=3)).eval()
    x = image(1, 4, 6, 9)
    with torch.no_grad():
        expected = sum(b.bn(b.conv(x)) for b in block.branch_convs)
        expected = expected + block.branch_scale.bn(block.branch_scale.conv(x))
        expected = F.relu(expected + block.branch_identity(x))
        assert torch.allclose(block(x), expected, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(channels=st.integers(1, 8), out=st.integers(1, 8), h=st.integers(3, 12),
       w=st.integers(3, 12), stride=st.sampled_from([1, 2]), branches=st.integers(1, 4),
       depthwise=st.booleans(), use_se=st.booleans())
def test_mobileone_block_fuses_exactly_for_any_shape(channels, out, h, w, stride, branches,
                                                     depthwise, use_se):
    if depthwise:  # MobileOne's depthwise 3x3 block keeps the width
        block = MobileOneBlock(channels, channels, 3, stride, channels, branches, use_se)
    else:
        block = MobileOneBlock(channels, out, 1, 1, 1, branches, use_se)
    assert_fusion_exact(block, image(1, channels, h, w))


def test_mobileone_block_refuses_bad_arguments():
    with pytest.raises(ValueError, match='num_conv_branches'):
        MobileOneBlock(4, 4, num_conv_branches=0)
    with pytest.raises(ValueError, match='odd'):
        MobileOneBlock(4, 4, kernel_size=2)


# ---------------------------------------------------------------- RepViT blocks


@pytest.mark.parametrize('legacy', [False, True])
def test_repvgg_dw_formula_and_fusion(legacy):
    mixer = randomize_bn(RepVGGDW(6, legacy=legacy)).eval()
    x = image(2, 6, 7, 10)
    with torch.no_grad():
        total = mixer.branch_3x3.bn(mixer.branch_3x3.conv(x)) + x
        if legacy:  # BN on the 1x1 branch, nothing after the sum
            assert mixer.post_norm is None
            total = total + mixer.branch_1x1.bn(mixer.branch_1x1.conv(x))
        else:  # a biased 1x1 branch without BN, one BN after the sum
            assert mixer.branch_1x1.bias is not None
            total = mixer.post_norm(total + mixer.branch_1x1(x))
        assert torch.allclose(mixer(x), total, atol=1e-6)
    fused = assert_fusion_exact(mixer, x)
    assert fused.branch_reparam.groups == 6 and fused.branch_reparam.kernel_size == (3, 3)
    assert set(fused.state_dict()) == {'branch_reparam.weight', 'branch_reparam.bias'}
    deploy_twin(fused, RepVGGDW(6, legacy=legacy, deploy=True), x)


@settings(max_examples=10, deadline=None)
@given(channels=st.integers(1, 12), h=st.integers(3, 12), w=st.integers(3, 12),
       legacy=st.booleans(), use_se=st.booleans(), mlp_ratio=st.sampled_from([1, 2]))
def test_repvit_block_fuses_exactly_for_any_shape(channels, h, w, legacy, use_se, mlp_ratio):
    block = RepViTBlock(channels, mlp_ratio, use_se=use_se, legacy=legacy)
    fused = assert_fusion_exact(block, image(1, channels, h, w))
    assert isinstance(fused.token_mixer.branch_reparam, nn.Conv2d)


@settings(max_examples=8, deadline=None)
@given(cin=st.integers(1, 10), cout=st.integers(1, 10), h=st.integers(3, 12),
       w=st.integers(3, 12))
def test_repvit_downsample_fuses_exactly_for_any_shape(cin, cout, h, w):
    block = RepViTDownsample(cin, cout)
    x = image(1, cin, h, w)
    fused = assert_fusion_exact(block, x)
    assert fused(x).shape == (1, cout, (h + 1) // 2, (w + 1) // 2)
    deploy_twin(fused, RepViTDownsample(cin, cout, deploy=True), x)


def test_repvit_block_residual_and_se_width():
    block = randomize_bn(RepViTBlock(64, use_se=True)).eval()
    assert isinstance(block.se, SqueezeExcite) and block.se.down.out_channels == 16
    x = image(1, 64, 5, 6)
    with torch.no_grad():
        mixed = block.se(block.token_mixer(x))
        assert torch.allclose(block(x), mixed + block.channel_mixer(mixed), atol=1e-6)
    # timm's SqueezeExcite(C, 0.25): C/4 rounded to a multiple of 8, never rounded up for 10%
    assert [se_channels(c) for c in (48, 56, 80, 112, 160)] == [16, 16, 24, 32, 40]
    assert make_divisible(28, 8, round_limit=0) == 32 and make_divisible(20, 8) == 24


# ---------------------------------------------------------------- architectures

# Stage widths: official apple/ml-mobileone PARAMS (int(base * multiplier), stem
# min(64, .)), THU-MIG/RepViT cfgs (timm embed_dim).
MOBILEONE_WIDTHS = {'s0': [48, 128, 256, 1024], 's1': [96, 192, 512, 1280],
                    's2': [96, 256, 640, 2048], 's3': [128, 320, 768, 2048],
                    's4': [192, 448, 896, 2048]}
REPVIT_WIDTHS = {'m0.9': [48, 96, 192, 384], 'm1.0': [56, 112, 224, 448],
                 'm1.1': [64, 128, 256, 512], 'm1.5': [64, 128, 256, 512],
                 'm2.3': [80, 160, 320, 640], 'm1': [48, 96, 192, 384],
                 'm2': [64, 128, 256, 512], 'm3': [64, 128, 256, 512]}
# Blocks of the official flat ``features`` list (cfgs rows), and the official taps.
REPVIT_FEATURES = {'m1.1': (24, [2, 6, 20, 24], [3, 7, 21, 24]),
                   'm1.5': (42, [4, 10, 36, 42], [5, 11, 37, 42]),
                   'm2.3': (54, [6, 14, 50, 54], [7, 15, 51, 54]),
                   'm0.9': (26, None, None), 'm1.0': (26, None, None), 'm1': (26, None, None),
                   'm2': (24, None, None), 'm3': (34, None, None)}


def meta(cls, *args, **kwargs):
    with torch.device('meta'):
        return cls(*args, **kwargs)


@pytest.mark.parametrize('arch', list(MobileOne.arch_settings))
def test_mobileone_arch_structure(arch):
    model = meta(MobileOne, arch)
    assert model.out_channels == MOBILEONE_WIDTHS[arch]
    assert len(model.stem.branch_convs) == 1
    assert model.stem.branch_convs[0].conv.out_channels == min(64, MOBILEONE_WIDTHS[arch][0])
    branches = 4 if arch == 's0' else 1
    for stage, depth in zip(model.stages, (2, 8, 10, 1)):
        assert len(stage) == 2 * depth
        dw, pw = stage[0::2], stage[1::2]
        assert all(b.branch_convs[0].conv.groups == b.branch_convs[0].conv.in_channels for b in dw)
        assert all(b.branch_convs[0].conv.kernel_size == (1, 1) for b in pw)
        assert all(len(b.branch_convs) == branches for b in stage)
        assert dw[0].branch_convs[0].conv.stride == (2, 2)
    se = [[b.se is not None for b in stage[0::2]] for stage in model.stages]
    if arch == 's4':  # official: the last num_blocks // 2 pairs of stage 3 and all of stage 4
        assert se == [[False] * 2, [False] * 8, [False] * 5 + [True] * 5, [True]]
        assert model.stages[2][-1].se.down.out_channels == 896 // 16
    else:
        assert not any(map(any, se))


@pytest.mark.parametrize('arch', list(RepViT.arch_settings))
def test_repvit_arch_structure(arch):
    model = meta(RepViT, arch)
    assert model.out_channels == REPVIT_WIDTHS[arch]
    blocks = sum(len(stage) for stage in model.stages)
    features, _, _ = REPVIT_FEATURES[arch]
    assert blocks == features  # one mmrep block per official features entry
    legacy = arch in ('m1', 'm2', 'm3')
    for i, stage in enumerate(model.stages):
        body = list(stage) if i == 0 else list(stage)[2:]
        assert [b.se is not None for b in body] == [j % 2 == 0 for j in range(len(body))]
        assert all(b.token_mixer.legacy == legacy for b in body)
        if i:
            assert stage[0].se is None and isinstance(stage[1], RepViTDownsample)
            assert stage[1].spatial_downsample.conv.stride == (2, 2)


@pytest.mark.parametrize('cls, arch', [(MobileOne, a) for a in MobileOne.arch_settings]
                         + [(RepViT, a) for a in RepViT.arch_settings])
def test_every_arch_fuses_to_the_deploy_structure(cls, arch):
    # shapes only, at full size on the meta device: no BN left, the deploy=True layout
    model = meta(cls, arch).eval()
    with torch.device('meta'):
        model.reparameterize()
    deployed = meta(cls, arch, deploy=True)
    assert count_bn(model) == 0 and model.deploy
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in deployed.state_dict().items()}


@pytest.mark.parametrize('cls, arch', [(MobileOne, 's0'), (MobileOne, 's4'), (RepViT, 'm0.9'),
                                       (RepViT, 'm1.1'), (RepViT, 'm1')])
def test_arch_fuses_exactly(cls, arch):
    # full size on a small input, fused in place; strides 4/8/16/32
    model = randomize_bn(cls(arch)).eval()
    x = image(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        model.reparameterize()
        got = model(x)
    assert max_rel_diff(expected, got) <= 1e-4
    assert count_bn(model) == 0
    assert [o.shape[2:] for o in got] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [o.shape[1] for o in got] == model.out_channels


def test_repvit_taps_after_pre_block_follow_the_official_segmentation_code():
    model = randomize_bn(RepViT(SMALL_REPVIT)).eval()
    seg = RepViT(SMALL_REPVIT, taps_after_pre_block=True).eval()
    seg.load_state_dict(model.state_dict())
    x = image(1, 3, 64, 64)
    with torch.no_grad():
        det_taps, seg_taps = model(x), seg(x)
        for i in range(3):  # one block later: the next stage's pre-block, same stride
            assert torch.allclose(seg_taps[i], model.stages[i + 1][0](det_taps[i]), atol=1e-6)
            assert max_rel_diff(det_taps[i], seg_taps[i]) > 1e-2
        assert torch.equal(det_taps[3], seg_taps[3])
        # and it survives fusion
        assert max_rel_diff(seg_taps, reparameterize_model(seg)(x)) < 1e-4


def test_unknown_archs_list_the_valid_ones():
    with pytest.raises(ValueError) as err:
        MobileOne('s5')
    assert all(repr(a) in str(err.value) for a in MobileOne.arch_settings)
    with pytest.raises(ValueError) as err:
        RepViT('m1.2')
    assert all(repr(a) in str(err.value) for a in RepViT.arch_settings)
    with pytest.raises(ValueError, match='num_se_blocks'):
        MobileOne(dict(SMALL_MOBILEONE, num_se_blocks=[0, 3, 0, 0]))
    with pytest.raises(ValueError, match=r"unknown \['width'\]"):
        RepViT(dict(SMALL_REPVIT, width=[1]))
    with pytest.raises(ValueError, match='4 values'):
        RepViT(dict(widths=[8, 8, 8], depths=[1, 1, 1]))


# ---------------------------------------------------------------- OpenMMLab options


@pytest.mark.parametrize('cls', FAMILIES)
def test_out_indices_and_strides(cls):
    model = cls(SMALL[cls], out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = model(image(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == [model.out_channels[1], model.out_channels[3]]
    assert [o.shape[2:] for o in outs] == [(8, 12), (2, 3)]
    with pytest.raises(ValueError, match='out_indices'):
        cls(SMALL[cls], out_indices=(4,))


@pytest.mark.parametrize('cls', FAMILIES)
def test_frozen_stages(cls):
    model = cls(SMALL[cls], frozen_stages=1)
    model.train()
    frozen, free = [model.stem, model.stages[0]], list(model.stages[1:])
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in free for p in m.parameters())
    assert not any(bn.training for m in frozen for bn in bn_layers(m))
    assert all(bn.training for m in free for bn in bn_layers(m))
    stats = [bn.running_mean.clone() for bn in bn_layers(model.stem)]
    model(image(2, 3, 32, 32))
    assert all(torch.equal(a, bn.running_mean) for a, bn in zip(stats, bn_layers(model.stem)))


@pytest.mark.parametrize('cls', FAMILIES)
def test_norm_eval(cls):
    model = cls(SMALL[cls], norm_eval=True).train()
    assert model.training and bn_layers(model)
    assert not any(bn.training for bn in bn_layers(model))
    assert all(bn.training for bn in bn_layers(cls(SMALL[cls]).train()))


@pytest.mark.parametrize('cls', FAMILIES)
def test_with_cp_checkpoints_every_block_with_the_same_output_and_grads(cls, monkeypatch):
    plain = cls(SMALL[cls]).train()
    ckpt = cls(SMALL[cls], with_cp=True).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    real = backbone_base.cp.checkpoint
    monkeypatch.setattr(backbone_base.cp, 'checkpoint',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    results = []
    for model in (plain, ckpt):
        x = image(2, 3, 32, 48).requires_grad_()
        outs = model(x)
        sum(o.square().mean() for o in outs).backward()
        results.append((outs, x.grad, [p.grad.clone() for p in model.parameters()]))
    assert len(calls) == 1 + sum(len(stage) for stage in ckpt.stages)
    (outs_a, xg_a, g_a), (outs_b, xg_b, g_b) = results
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outs_a, outs_b))
    assert torch.allclose(xg_a, xg_b, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_a, g_b))
    # the BN statistics were updated once per step, not twice
    for a, b in zip(bn_layers(plain), bn_layers(ckpt)):
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6)


@pytest.mark.parametrize('cls', FAMILIES)
def test_syncbn_builds_and_fuses(cls):
    model = cls(SMALL[cls], norm_cfg=dict(type='SyncBN', requires_grad=True))
    assert bn_layers(model) and all(isinstance(bn, nn.SyncBatchNorm) for bn in bn_layers(model))
    assert count_bn(assert_fusion_exact(model, image(1, 3, 32, 48))) == 0


@pytest.mark.parametrize('cls', FAMILIES)
def test_unfusable_norm_refused_at_build_time(cls):
    with pytest.raises(ValueError, match='cannot be fused'):
        cls(SMALL[cls], norm_cfg=dict(type='GN', num_groups=1))


@pytest.mark.parametrize('cls', FAMILIES)
def test_pretrained_init_cfg_loads_strictly(cls, tmp_path):
    source = randomize_bn(cls(SMALL[cls])).eval()
    torch.save({'state_dict': source.state_dict()}, tmp_path / 'ok.pth')
    model = cls(SMALL[cls], init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'ok.pth')))
    model.init_weights()
    x = image(1, 3, 32, 48)
    with torch.no_grad():
        assert max_rel_diff(source(x), model.eval()(x)) == 0
    state = dict(source.state_dict())
    state.pop(next(k for k in state if k.endswith('running_var')))
    torch.save({'state_dict': state}, tmp_path / 'bad.pth')
    # refused when the backbone is built (the file is checked before any training starts)
    with pytest.raises(ValueError, match=r'1 missing key \(\S+running_var\)'):
        cls(SMALL[cls], init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'bad.pth')))


@pytest.mark.parametrize('cls', FAMILIES)
def test_reparameterize_in_place_is_idempotent(cls):
    model = randomize_bn(cls(SMALL[cls])).eval()
    model.reparameterize()
    state = copy.deepcopy(model.state_dict())
    model.switch_to_deploy()
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- ONNX


@pytest.mark.parametrize('cls, arch', [(RepViT, 'm1.1'), (MobileOne, 's0')])
def test_fused_backbone_exports_to_onnx_without_batchnorm(cls, arch, tmp_path):
    onnxruntime = pytest.importorskip('onnxruntime')
    from mmrep.deploy.graph_checks import check_onnx_graph
    model = randomize_bn(cls(arch)).eval()
    x = image(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
    fused = reparameterize_model(model)
    path = str(tmp_path / f'{arch}.onnx')
    with torch.no_grad():
        torch.onnx.export(fused, (x,), path, opset_version=17, input_names=['image'],
                          do_constant_folding=True, dynamo=False)
    report = check_onnx_graph(path, fused)
    assert report['bn_nodes'] == 0 and report['ok'], report['errors']
    # and the unfused model's export does hold them: the count can fail
    unfused_path = str(tmp_path / 'unfused.onnx')
    with torch.no_grad():
        torch.onnx.export(model, (x,), unfused_path, opset_version=17, do_constant_folding=False,
                          dynamo=False, training=torch.onnx.TrainingMode.PRESERVE)
    assert check_onnx_graph(unfused_path, model)['bn_nodes'] > 0
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    outs = session.run(None, {'image': x.numpy()})
    assert max_rel_diff(expected, [torch.from_numpy(o) for o in outs]) < 1e-4
