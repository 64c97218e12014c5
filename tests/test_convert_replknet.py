"""RepLKNet checkpoints of the official repo and of mmpretrain -> mmrep.

mmpretrain: the real ``mmpretrain.models.RepLKNet`` (mmpretrain 1.2.0) with
random weights and BN statistics, saved in mmpretrain's classifier layout.
Official (DingXiaoH/RepLKNet-pytorch, commit b76808a, ``replknet.py``): the
state dict is built here with the official key names and shapes; its
``structural_reparam`` deploy form is recomputed with the official merge
formula. Features are compared at every output stage, within 1e-4 relative.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from mmrep.converters.common import ConversionError
from mmrep.converters.replknet import ARCHS, convert
from mmrep.models.backbones.replknet import RepLKNet

mmpretrain_backbones = pytest.importorskip('mmpretrain.models.backbones')

BN_EPS = 1e-5
# the real channels and kernels of RepLKNet-31B, one block pair per stage (fast)
SHORT_31B = dict(large_kernel_sizes=[31, 29, 27, 13], layers=[1, 1, 1, 1],
                 channels=[128, 256, 512, 1024], small_kernel=5, dw_ratio=1)


def assert_close_rel(actual, expected, rel=1e-4):
    scale = expected.abs().max().clamp_min(1e-12)
    err = (actual - expected).abs().max() / scale
    assert err <= rel, f'relative error {err:.3g} > {rel}'


def randomize(model, seed=0):
    """Non-trivial weights and BN statistics, scaled to keep activations O(1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith('num_batches_tracked'):
                continue
            if tensor.dim() == 4:
                tensor.copy_(torch.randn(tensor.shape, generator=gen)
                             / math.sqrt(tensor[0].numel()))
            elif name.endswith('running_var'):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            elif name.endswith('.weight') and 'head' not in name:
                tensor.copy_(1 + 0.3 * torch.randn(tensor.shape, generator=gen))
            else:
                tensor.copy_(0.2 * torch.randn(tensor.shape, generator=gen))
    return model


def image(size=64, seed=1):
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def mmpretrain_replknet(arch, out_indices=(0, 1, 2, 3), seed=0):
    model = mmpretrain_backbones.RepLKNet(arch=arch, out_indices=out_indices, drop_path_rate=0.)
    model.eval()  # mmpretrain's RepLKNet.train() returns None: no chaining
    return randomize(model, seed)


def save_mmpretrain_classifier(backbone, path):
    """mmpretrain's ImageClassifier checkpoint layout: state_dict with 'backbone.' keys."""
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    width = backbone.arch['channels'][-1]
    state['head.fc.weight'] = torch.randn(1000, width)
    state['head.fc.bias'] = torch.zeros(1000)
    torch.save({'meta': {'mmpretrain_version': '1.2.0'}, 'state_dict': state}, path)


def unwrap(path):
    """What the core does before ``convert``: pick 'state_dict', strip 'backbone.'."""
    state = torch.load(path, map_location='cpu', weights_only=True)['state_dict']
    return {k[len('backbone.'):] if k.startswith('backbone.') else k: v for k, v in state.items()}


def load_pretrained(path, **kwargs):
    model = RepLKNet(init_cfg=dict(type='Pretrained', checkpoint=str(path)), **kwargs)
    model.init_weights()
    return model.eval()


# ------------------------------------------------------------------- mmpretrain
def test_mmpretrain_31b_classifier_checkpoint_gives_its_features(tmp_path):
    """The real RepLKNet-31B (all 24 block pairs), through init_cfg=Pretrained."""
    peer = mmpretrain_replknet('31B', seed=3)
    save_mmpretrain_classifier(peer, tmp_path / 'mmpretrain.pth')
    conversion = convert(unwrap(tmp_path / 'mmpretrain.pth'), 'mmpretrain', 'replknet-31b',
                         out_norm_stages=(0, 1, 2, 3))
    assert not conversion.deploy
    assert conversion.dropped == ['head.fc.weight', 'head.fc.bias']
    torch.save({'state_dict': conversion.state_dict}, tmp_path / 'mmrep.pth')
    model = load_pretrained(tmp_path / 'mmrep.pth', arch='31B', norm_intermediate_features=True)
    assert set(model.state_dict()) == set(conversion.state_dict)  # nothing missing/unexpected
    x = image(32)
    with torch.no_grad():
        expected, actual = peer(x), model(x)
    assert len(actual) == len(expected) == 4
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        assert_close_rel(a, e)


def test_mmpretrain_stage_norms_of_stages_not_taken_are_dropped(tmp_path):
    peer = mmpretrain_replknet(SHORT_31B, seed=4)
    save_mmpretrain_classifier(peer, tmp_path / 'mmpretrain.pth')
    conversion = convert(unwrap(tmp_path / 'mmpretrain.pth'), 'mmpretrain', 'replknet-31b',
                         out_norm_stages=(1, 3))
    dropped_norms = sorted({k.rsplit('.', 1)[0] for k in conversion.dropped
                            if k.startswith('stages.')})
    assert dropped_norms == ['stages.0.norm', 'stages.2.norm']
    torch.save({'state_dict': conversion.state_dict}, tmp_path / 'mmrep.pth')
    model = load_pretrained(tmp_path / 'mmrep.pth', arch='31B', layers=(1, 1, 1, 1),
                            out_indices=(1, 3), norm_intermediate_features=True)
    assert set(model.state_dict()) == set(conversion.state_dict)
    x = image()
    with torch.no_grad():
        expected, actual = peer(x), model(x)
    for a, e in zip(actual, (expected[1], expected[3])):
        assert_close_rel(a, e)
    # the default target (no output norms) takes none of them
    conversion = convert(unwrap(tmp_path / 'mmpretrain.pth'), 'mmpretrain', 'replknet-31b')
    RepLKNet(arch='31B', layers=(1, 1, 1, 1)).load_state_dict(conversion.state_dict, strict=True)
    assert sum(k.startswith('stages.') and '.norm.' in k for k in conversion.dropped) == 4 * 5


@pytest.mark.parametrize('name', ['31B', 'XL'])
def test_mmpretrain_deploy_checkpoint_folds_into_the_fused_model(name):
    arch = dict(mmpretrain_backbones.RepLKNet.arch_settings[name], layers=[1, 1, 1, 1])
    peer = mmpretrain_replknet(arch, seed=5)
    x = image()
    with torch.no_grad():
        expected = peer(x)
    peer.switch_to_deploy()
    state = peer.state_dict()
    bns = {k.rsplit('.', 1)[0] for k in state if k.endswith('running_var')}
    assert bns  # the official/mmpretrain deploy form keeps its BatchNorms
    conversion = convert(state, 'mmpretrain', f'replknet-{name}', out_norm_stages=(0, 1, 2, 3))
    assert conversion.deploy
    assert not any('bn' in k for k in conversion.state_dict)
    model = RepLKNet(arch=name, layers=(1, 1, 1, 1), norm_intermediate_features=True,
                     deploy=True).eval()
    model.load_state_dict(conversion.state_dict, strict=True)
    with torch.no_grad():
        actual = model(x)
    for a, e in zip(actual, expected):
        assert_close_rel(a, e)


# --------------------------------------------------------------------- official
def official_replknet(arch, layers=None, classifier=True, seed=0, meta=False):
    """A state dict of the official ``RepLKNet`` (replknet.py), keys and shapes as there.

    ``classifier=True``: ImageNet model (``norm``, ``head``, no stage norms);
    False: downstream model with ``norm_intermediate_features`` (a ``norm`` per stage).
    ``meta=True``: shapes only, on the meta device.
    """
    settings = RepLKNet.arch_settings[arch]
    layers = layers or settings['layers']
    channels = settings['channels']
    gen = torch.Generator().manual_seed(seed)
    state = {}

    def randn(*shape):
        return (torch.empty(*shape, device='meta') if meta
                else torch.randn(*shape, generator=gen))

    def conv(name, cout, cin_per_group, k):
        fan_in = cin_per_group * k * k
        state[f'{name}.weight'] = randn(cout, cin_per_group, k, k) / math.sqrt(fan_in)

    def bn(name, c):
        state.update({f'{name}.weight': 1 + 0.3 * randn(c),
                      f'{name}.bias': 0.2 * randn(c),
                      f'{name}.running_mean': 0.2 * randn(c),
                      f'{name}.running_var': 0.5 + randn(c).abs(),
                      f'{name}.num_batches_tracked': torch.tensor(7)})

    def conv_bn(name, cin, cout, k, groups=1):
        conv(f'{name}.conv', cout, cin // groups, k)
        bn(f'{name}.bn', cout)

    c0 = channels[0]
    for i, (cin, k, g) in enumerate([(3, 3, 1), (c0, 3, c0), (c0, 1, 1), (c0, 3, c0)]):
        conv_bn(f'stem.{i}', cin, c0, k, g)
    for s, (n, c, lk) in enumerate(zip(layers, channels, settings['large_kernel_sizes'])):
        dw = int(c * settings['dw_ratio'])
        for j in range(n):
            p = f'stages.{s}.blocks.{2 * j}'
            conv_bn(f'{p}.pw1', c, dw, 1)
            conv_bn(f'{p}.pw2', dw, c, 1)
            conv_bn(f'{p}.large_kernel.lkb_origin', dw, dw, lk, dw)
            if settings['small_kernel']:
                conv_bn(f'{p}.large_kernel.small_conv', dw, dw, settings['small_kernel'], dw)
            bn(f'{p}.prelkb_bn', c)
            p = f'stages.{s}.blocks.{2 * j + 1}'
            bn(f'{p}.preffn_bn', c)
            conv_bn(f'{p}.pw1', c, c * settings['ffn_ratio'], 1)
            conv_bn(f'{p}.pw2', c * settings['ffn_ratio'], c, 1)
        if not classifier:
            bn(f'stages.{s}.norm', c)
        if s < 3:
            conv_bn(f'transitions.{s}.0', c, channels[s + 1], 1)
            conv_bn(f'transitions.{s}.1', channels[s + 1], channels[s + 1], 3, channels[s + 1])
    if classifier:
        bn('norm', channels[-1])
        state['head.weight'] = randn(1000, channels[-1])
        state['head.bias'] = 0 * randn(1000)
    return state


def official_fuse_bn(state, prefix):
    """Official ``fuse_bn(conv, bn)``."""
    std = (state[f'{prefix}.bn.running_var'] + BN_EPS).sqrt()
    t = state[f'{prefix}.bn.weight'] / std
    return (state[f'{prefix}.conv.weight'] * t.reshape(-1, 1, 1, 1),
            state[f'{prefix}.bn.bias'] - state[f'{prefix}.bn.running_mean'] * t)


def official_structural_reparam(state):
    """Official ``RepLKNet.structural_reparam``: only the large kernels merge."""
    out = dict(state)
    for key in [k for k in state if k.endswith('large_kernel.lkb_origin.conv.weight')]:
        lk = key[:-len('.lkb_origin.conv.weight')]
        kernel, bias = official_fuse_bn(state, f'{lk}.lkb_origin')
        if f'{lk}.small_conv.conv.weight' in state:
            small_k, small_b = official_fuse_bn(state, f'{lk}.small_conv')
            pad = (kernel.shape[-1] - small_k.shape[-1]) // 2
            kernel, bias = kernel + F.pad(small_k, [pad] * 4), bias + small_b
        for k in [k for k in out if k.startswith((f'{lk}.lkb_origin.', f'{lk}.small_conv.'))]:
            del out[k]
        out[f'{lk}.lkb_reparam.weight'], out[f'{lk}.lkb_reparam.bias'] = kernel, bias
    return out


def test_official_downstream_checkpoint_equals_the_official_model():
    """Official keys load unchanged into mmpretrain's port (the reference forward)."""
    state = official_replknet('31B', layers=(1, 1, 1, 1), classifier=False, seed=6)
    reference = mmpretrain_backbones.RepLKNet(arch=SHORT_31B, out_indices=(0, 1, 2, 3),
                                              drop_path_rate=0.)
    reference.eval()
    reference.load_state_dict(state, strict=True)
    conversion = convert(state, 'official', 'replknet-31b', out_norm_stages=(0, 1, 2, 3))
    assert conversion.dropped == []
    model = RepLKNet(arch='31B', layers=(1, 1, 1, 1), norm_intermediate_features=True).eval()
    model.load_state_dict(conversion.state_dict, strict=True)
    deploy = convert(official_structural_reparam(state), 'official', 'replknet-31b',
                     out_norm_stages=(0, 1, 2, 3))
    assert deploy.deploy
    fused = RepLKNet(arch='31B', layers=(1, 1, 1, 1), norm_intermediate_features=True,
                     deploy=True).eval()
    fused.load_state_dict(deploy.state_dict, strict=True)
    x = image()
    with torch.no_grad():
        expected, actual, actual_fused = reference(x), model(x), fused(x)
    for a, f, e in zip(actual, actual_fused, expected):
        assert_close_rel(a, e)
        assert_close_rel(f, e)


def test_official_imagenet_checkpoint_drops_the_classifier_and_fuses_exactly():
    state = official_replknet('31B', layers=(1, 2, 1, 1), seed=7)
    conversion = convert(state, 'official', 'replknet-31b')
    assert sorted(conversion.dropped) == ['head.bias', 'head.weight', 'norm.bias',
                                          'norm.num_batches_tracked', 'norm.running_mean',
                                          'norm.running_var', 'norm.weight']
    assert 'stages.1.2.pw1.conv.weight' in conversion.state_dict  # blocks.1 -> stages.1.2
    assert 'stages.2.0.1.bn.running_var' in conversion.state_dict  # transitions.1.1
    model = RepLKNet(arch='31B', layers=(1, 2, 1, 1)).eval()
    model.load_state_dict(conversion.state_dict, strict=True)
    deploy_state = official_structural_reparam(state)
    # 4 stem + 2 per transition + (prelkb, pw1, pw2, preffn, pw1, pw2) per block pair
    assert sum(k.endswith('running_var') for k in deploy_state) - 1 == 4 + 6 + 6 * 5
    deploy = convert(deploy_state, 'official', 'replknet-31b')
    fused = RepLKNet(arch='31B', layers=(1, 2, 1, 1), deploy=True).eval()
    fused.load_state_dict(deploy.state_dict, strict=True)
    x = image()
    with torch.no_grad():
        for a, e in zip(fused(x), model(x)):
            assert_close_rel(a, e)


@pytest.mark.parametrize('name', sorted(ARCHS))
def test_full_official_checkpoints_fit_every_arch(name):
    """Keys and shapes of the full archs, training and deploy form (on the meta device)."""
    arch = ARCHS[name]['arch']
    state = official_replknet(arch, meta=True)
    deploy_state = official_structural_reparam(state)
    with torch.device('meta'):
        train_model, deploy_model = RepLKNet(arch=arch), RepLKNet(arch=arch, deploy=True)
    for official, target in ((state, train_model), (deploy_state, deploy_model)):
        conversion = convert(official, 'official', name)
        expected = target.state_dict()
        assert set(conversion.state_dict) == set(expected)
        assert all(conversion.state_dict[k].shape == expected[k].shape for k in expected)
    if name == 'replknet-31b':  # the 154 BatchNorms of the official deploy form
        assert sum(k.endswith('running_var') for k in deploy_state) == 154 + 1


# -------------------------------------------------------------------- refusals
@pytest.fixture(scope='module')
def short_state():
    return official_replknet('31B', layers=(1, 1, 1, 1), classifier=False, seed=8)


def test_weights_of_another_arch_are_refused_naming_it(short_state):
    with pytest.raises(ConversionError, match=r'RepLKNet-31B.*replknet-31l'):
        convert(short_state, 'official', 'replknet-31l')
    with pytest.raises(ConversionError, match=r'RepLKNet-31B.*replknet-xl'):
        convert(official_structural_reparam(short_state), 'official', 'RepLKNet-XL')


def test_wrong_arch_refusal_names_the_keys(short_state):
    """Issue 16 item 10: 31B given as 31L names the keys and their shapes."""
    with pytest.raises(ConversionError) as info:
        convert(short_state, 'official', 'replknet-31l')
    assert ('stages.0.0.large_kernel.lkb_origin.conv.weight: [128, 1, 31, 31] instead of '
            '[192, 1, 31, 31]') in str(info.value)
    with pytest.raises(ConversionError,
                       match=r'stages\.3\.1\.large_kernel\.lkb_reparam\.weight: '
                             r'\[1024, 1, 13, 13\] instead of \[3072, 1, 13, 13\]'):
        convert(official_structural_reparam(short_state), 'official', 'replknet-xl')


def test_unknown_keys_source_and_arch_are_refused(short_state):
    bad = dict(short_state, **{'patch_embed.proj.weight': torch.zeros(1),
                               'blocks.0.weight': torch.zeros(1)})
    with pytest.raises(ConversionError, match=r'2 keys.*patch_embed\.proj\.weight.*blocks\.0'):
        convert(bad, 'official', 'replknet-31b')
    with pytest.raises(ConversionError, match='timm'):
        convert(short_state, 'timm', 'replknet-31b')
    with pytest.raises(ConversionError, match='replknet-31s'):
        convert(short_state, 'official', 'replknet-31s')


def test_missing_keys_are_refused_naming_them(short_state):
    deploy_state = official_structural_reparam(short_state)
    del deploy_state['stages.1.blocks.1.preffn_bn.running_var']
    with pytest.raises(ConversionError, match=r'stages\.1\.2\.preffn_bn.running_var'):
        convert(deploy_state, 'official', 'replknet-31b')
    no_norm = {k: v for k, v in short_state.items() if not k.startswith('stages.2.norm.')}
    with pytest.raises(ConversionError, match=r'no stage norm.*\[2\]'):
        convert(no_norm, 'official', 'replknet-31b', out_norm_stages=(0, 2))


def test_mixed_training_and_deploy_forms_are_refused(short_state):
    mixed = official_structural_reparam(short_state)
    mixed.update({k: v for k, v in short_state.items() if 'stages.3.' in k})
    with pytest.raises(ConversionError, match='mixes merged'):
        convert(mixed, 'official', 'replknet-31b')


def test_imagenet_weights_load_into_a_backbone_with_output_norms(tmp_path):
    """Output norms are a downstream layer (the official XL setting): an ImageNet
    checkpoint without them loads strictly otherwise, and they start as fresh norms."""
    from mmrep.models.pretrained import PretrainedMismatchError

    imagenet = randomize(RepLKNet(arch=dict(SHORT_31B, ffn_ratio=4), drop_path_rate=0.))
    path = str(tmp_path / 'imagenet.pth')
    torch.save({'state_dict': imagenet.state_dict()}, path)
    cfg = dict(arch=dict(SHORT_31B, ffn_ratio=4), drop_path_rate=0.,
               norm_intermediate_features=True,
               init_cfg=dict(type='Pretrained', checkpoint=path))
    model = RepLKNet(**cfg)
    model.init_weights()
    assert torch.equal(model.stages[2][1].pw1.conv.weight, imagenet.stages[2][1].pw1.conv.weight)
    assert torch.equal(model.out_norms[0].bn.weight, torch.ones(128))  # BN's own init

    # any other missing weight is still refused, naming it (now when the model is built)
    state = imagenet.state_dict()
    state.pop('stem.0.conv.weight')
    torch.save({'state_dict': state}, path)
    with pytest.raises(PretrainedMismatchError, match='stem.0.conv.weight'):
        RepLKNet(**cfg).init_weights()


def test_fused_backbone_from_imagenet_weights_has_fresh_folded_output_norms(tmp_path):
    """Issue 16 item 12: a missing output norm of the deploy form is a fresh BatchNorm folded
    (kernel 1/sqrt(1 + eps), bias 0), so the fused and training forms agree, also when another
    init_cfg entry touched those convs first."""
    from mmrep.reparam import reparameterize_model
    imagenet = randomize(RepLKNet(arch=dict(SHORT_31B, ffn_ratio=4), drop_path_rate=0.), seed=9)
    fused_weights = reparameterize_model(imagenet.eval())
    train_path, deploy_path = str(tmp_path / 'train.pth'), str(tmp_path / 'deploy.pth')
    torch.save({'state_dict': imagenet.state_dict()}, train_path)
    torch.save({'state_dict': fused_weights.state_dict()}, deploy_path)
    common = dict(arch=dict(SHORT_31B, ffn_ratio=4), drop_path_rate=0.,
                  norm_intermediate_features=True)
    trained = RepLKNet(**common, init_cfg=dict(type='Pretrained', checkpoint=train_path))
    trained.init_weights()
    fused = RepLKNet(**common, deploy=True, init_cfg=[
        dict(type='Kaiming', layer='Conv2d'),
        dict(type='Pretrained', checkpoint=deploy_path)])
    fused.init_weights()
    for norm in fused.out_norms:
        assert torch.allclose(norm.conv.weight, torch.full_like(norm.conv.weight,
                                                                1 / math.sqrt(1 + BN_EPS)))
        assert torch.equal(norm.conv.bias, torch.zeros_like(norm.conv.bias))
    x = image()
    with torch.no_grad():
        for a, e in zip(fused.eval()(x), trained.eval()(x)):
            assert_close_rel(a, e)


def test_surplus_output_norms_are_skipped_and_logged(tmp_path, monkeypatch):
    """Issue 16 item 13: a checkpoint with more output norms than the model returns."""
    peer = mmpretrain_replknet(SHORT_31B, seed=10)  # four stage norms
    save_mmpretrain_classifier(peer, tmp_path / 'mmpretrain.pth')
    conversion = convert(unwrap(tmp_path / 'mmpretrain.pth'), 'mmpretrain', 'replknet-31b',
                         out_norm_stages=(0, 1, 2, 3))
    torch.save({'state_dict': conversion.state_dict}, tmp_path / 'mmrep.pth')
    from mmrep.models import pretrained
    logged = []
    monkeypatch.setattr(pretrained, 'print_log', lambda msg, **kwargs: logged.append(msg))
    model = load_pretrained(tmp_path / 'mmrep.pth', arch='31B', layers=(1, 1, 1, 1),
                            out_indices=(1, 3), norm_intermediate_features=True)
    assert any('skipped 10 keys' in msg and 'out_norms.0.bn.bias' in msg for msg in logged), logged
    x = image()
    with torch.no_grad():
        expected, actual = peer(x), model(x)
    for a, e in zip(actual, (expected[1], expected[3])):
        assert_close_rel(a, e)
    # and into a backbone without output norms at all
    plain = load_pretrained(tmp_path / 'mmrep.pth', arch='31B', layers=(1, 1, 1, 1))
    assert not any(k.startswith('out_norms.') for k in plain.state_dict())
