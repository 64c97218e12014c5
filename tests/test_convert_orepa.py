"""Official OREPA-ResNet checkpoints (JUGGHM/OREPA_CVPR2022, commit 3ed037b) -> mmrep.

The official checkpoints are built here with the official key names and
shapes (``blocks.py``: OREPA, OREPA_1x1, OREPA_LargeConv; ``basic.py``:
ConvBN; ``models/resnet.py``; ``convert.py`` for the deploy form) and random,
non-trivial weights and BN statistics. The official model is recomputed
independently of mmrep, following the official formulas: every kernel from
its branches, the 7x7 stem by chaining ``F.conv2d`` of the generated 3x3
kernels (a cross-correlation, no flip), BN in eval mode.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from mmrep.converters.common import ConversionError
from mmrep.converters.orepa_resnet import ARCHS, convert, orepa_kernel_from_official
from mmrep.blocks.orepa import OREPAKernel
from mmrep.models.backbones.orepa_resnet import OREPAResNet
from test_orepa import official_identity, official_k3_prior

BLOCKS = {18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)),
          50: ('bottleneck', (3, 4, 6, 3)), 101: ('bottleneck', (3, 4, 23, 3))}
EXPANSION = {'basic': 1, 'bottleneck': 4}
BN_EPS = 1e-5


# ---------------------------------------------------------------- official layout
BUFFERS = ('weight_orepa_avg_avg', 'weight_orepa_prior', 'id_tensor')


def without_buffers(leaves):
    return {k: v for k, v in leaves.items() if k not in BUFFERS}


def randn(gen, *shape):
    """Standard normal values; shapes only (meta device) when ``gen`` is None."""
    if gen is None:
        return torch.empty(*shape, device='meta')
    return torch.randn(*shape, generator=gen)


def rand(gen, *shape, fan_in=None):
    fan_in = fan_in or math.prod(shape[1:])
    return randn(gen, *shape) / math.sqrt(fan_in)


def on(gen, tensor):
    return tensor.to('meta' if gen is None else 'cpu')


def official_orepa(gen, cin, cout, groups=1, k=3):
    """The state of an official ``OREPA`` (blocks.py), buffers included."""
    cpg = cin // groups
    internal = cin if groups <= 4 else 2 * cin
    vector = on(gen, torch.tensor([0.25, 0.25, 0.0, 0.5, 1.0, 0.5])[:, None]) \
        + 0.3 * randn(gen, 6, cout)
    return {
        'weight_orepa_origin': rand(gen, cout, cpg, k, k),
        'weight_orepa_avg_conv': rand(gen, cout, cpg, 1, 1),
        'weight_orepa_pfir_conv': rand(gen, cout, cpg, 1, 1),
        'weight_orepa_avg_avg': on(gen, torch.ones(k, k) / k ** 2),
        'weight_orepa_1x1': rand(gen, cout, cpg, 1, 1),
        'weight_orepa_1x1_kxk_idconv1': 0.2 * rand(gen, internal, cpg, 1, 1),
        'id_tensor': on(gen, official_identity(internal, cin, groups)),
        'weight_orepa_1x1_kxk_conv2': rand(gen, cout, internal // groups, k, k),
        'weight_orepa_gconv_dw': rand(gen, cin * 8, 1, k, k, fan_in=3),
        'weight_orepa_gconv_pw': rand(gen, cout, cin * 8 // groups, 1, 1),
        'vector': vector,
        'weight_orepa_prior': on(gen, official_k3_prior(cout)),
    }


def official_orepa_1x1(gen, cin, cout):
    """The state of an official ``OREPA_1x1``: the identity side is l2i_conv1 when widening."""
    identity = on(gen, torch.eye(min(cin, cout))[:, :, None, None])
    if cout > cin:
        conv1, conv2 = identity, rand(gen, cout, cin, 1, 1)
    else:
        conv1, conv2 = rand(gen, cout, cin, 1, 1), identity
    return {'weight_or1x1_origin': rand(gen, cout, cin, 1, 1),
            'weight_or1x1_l2i_conv1': conv1 + 0.1 * randn(gen, *conv1.shape),
            'weight_or1x1_l2i_conv2': conv2,
            'vector': on(gen, torch.tensor([1.0, 0.5])[:, None]) + 0.3 * randn(gen, 2, cout)}


def official_bn(gen, channels):
    return {'weight': 1 + 0.3 * randn(gen, channels),
            'bias': 0.2 * randn(gen, channels),
            'running_mean': 0.3 * randn(gen, channels),
            'running_var': 0.5 + randn(gen, channels).abs(),
            'num_batches_tracked': torch.tensor(1000)}


def add(state, prefix, leaves):
    state.update({f'{prefix}.{name}': value for name, value in leaves.items()})


def official_resnet(depth, width=1.0, seed=0, meta=False):
    """(state, modules) of the official ``create_Res{depth}`` with ``CONV_BN_IMPL='OREPA'``.

    ``modules``: ``(prefix, kind, in, out, stride)`` in forward order, kind in
    {'large', 'orepa', 'orepa1x1', 'convbn'}. ``meta=True``: shapes only.
    """
    gen = None if meta else torch.Generator().manual_seed(seed)
    kind, counts = BLOCKS[depth]
    state, modules = {}, []
    planes = int(64 * width)
    for i in range(3):  # OREPA_LargeConv(3, planes, 7): weight0..2, internal = out
        add(state, f'stage0.conv1.weight{i}', official_orepa(gen, 3 if i == 0 else planes, planes))
    add(state, 'stage0.conv1.bn', official_bn(gen, planes))
    modules.append(('stage0.conv1', 'large', 3, planes, 2))
    in_planes = planes
    for s, n in enumerate(counts, start=1):
        planes = int(64 * 2 ** (s - 1) * width)
        out = planes * EXPANSION[kind]
        for b in range(n):
            stride = 2 if s > 1 and b == 0 else 1
            p = f'stage{s}.{b}'
            if kind == 'basic':
                convs = [('conv1', 'orepa', in_planes, planes, stride),
                         ('conv2', 'orepa', planes, out, 1)]
                shortcut = ('shortcut', 'convbn', in_planes, out, stride)
            else:
                convs = [('conv1', 'orepa1x1', in_planes, planes, 1),
                         ('conv2', 'orepa', planes, planes, stride),
                         ('conv3', 'orepa1x1', planes, out, 1)]
                shortcut = ('shortcut', 'orepa1x1', in_planes, out, stride)
            if stride != 1 or in_planes != out:
                convs.append(shortcut)
            for name, conv_kind, cin, cout, conv_stride in convs:
                prefix = f'{p}.{name}'
                if conv_kind == 'orepa':
                    add(state, prefix, official_orepa(gen, cin, cout))
                elif conv_kind == 'orepa1x1':
                    add(state, prefix, official_orepa_1x1(gen, cin, cout))
                else:
                    state[f'{prefix}.conv.weight'] = rand(gen, cout, cin, 1, 1)
                add(state, f'{prefix}.bn', official_bn(gen, cout))
                modules.append((prefix, conv_kind, cin, cout, conv_stride))
            in_planes = out
    state['linear.weight'] = rand(gen, 1000, in_planes)
    state['linear.bias'] = 0 * randn(gen, 1000)
    return state, modules


# ------------------------------------------------- the official model, recomputed
def leaves_of(state, prefix):
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + '.')}


def official_orepa_kernel(p, groups=1):
    """Official ``OREPA.weight_gen`` (blocks.py), branch by branch."""
    v = p['vector']
    cin = p['weight_orepa_gconv_dw'].shape[0] // 8
    k = p['weight_orepa_origin'].shape[-1]

    def scaled(kernel, row):
        return kernel * v[row].reshape(-1, 1, 1, 1)

    origin = scaled(p['weight_orepa_origin'], 0)
    avg = scaled(torch.einsum('oi,hw->oihw', p['weight_orepa_avg_conv'][:, :, 0, 0],
                              p['weight_orepa_avg_avg']), 1)
    pfir = scaled(torch.einsum('oi,ohw->oihw', p['weight_orepa_pfir_conv'][:, :, 0, 0],
                               p['weight_orepa_prior']), 2)
    conv1 = (p['weight_orepa_1x1_kxk_idconv1'] + p['id_tensor'])[:, :, 0, 0]
    conv2 = p['weight_orepa_1x1_kxk_conv2']
    t, ig = conv1.shape
    o, tg = conv2.shape[:2]
    kxk = torch.einsum('gti,gothw->goihw', conv1.reshape(groups, t // groups, ig),
                       conv2.reshape(groups, o // groups, tg, k, k)).reshape(o, ig, k, k)
    kxk = scaled(kxk, 3)
    pad = (k - 1) // 2
    one = scaled(F.pad(p['weight_orepa_1x1'], [pad] * 4), 4)
    # dwsc2full(dw, pw, in_channels, groups): pw viewed (O/g, g, C/g, 8), interleaved rows
    dw = p['weight_orepa_gconv_dw'].reshape(groups, cin // groups, 8, 1, k, k)
    pw = p['weight_orepa_gconv_pw'].reshape(o // groups, groups, cin // groups, 8)
    dws = scaled(torch.einsum('cgtihw,ocgt->cogihw', dw, pw).reshape(o, cin // groups, k, k), 5)
    return origin + avg + one + kxk + pfir + dws


def official_orepa_1x1_kernel(p):
    v = p['vector']
    l2i = torch.einsum('tihw,othw->oihw', p['weight_or1x1_l2i_conv1'], p['weight_or1x1_l2i_conv2'])
    return (p['weight_or1x1_origin'] * v[0].reshape(-1, 1, 1, 1)
            + l2i * v[1].reshape(-1, 1, 1, 1))


def official_large_kernel(state, prefix, layers=3):
    """Official ``OREPA_LargeConv.weight_gen``: chained F.conv2d, no flip."""
    weight = official_orepa_kernel(leaves_of(state, f'{prefix}.weight0')).transpose(0, 1)
    for i in range(1, layers):
        weight = F.conv2d(weight, official_orepa_kernel(leaves_of(state, f'{prefix}.weight{i}')),
                          padding=2)
    return weight.transpose(0, 1)


def official_kernel(state, prefix, kind):
    if kind == 'large':
        return official_large_kernel(state, prefix)
    if kind == 'orepa':
        return official_orepa_kernel(leaves_of(state, prefix))
    if kind == 'orepa1x1':
        return official_orepa_1x1_kernel(leaves_of(state, prefix))
    return state[f'{prefix}.conv.weight']


def fold_official_bn(kernel, bn):
    """Official ``transI_fusebn``."""
    std = (bn['running_var'] + BN_EPS).sqrt()
    return (kernel * (bn['weight'] / std).reshape(-1, 1, 1, 1),
            bn['bias'] - bn['running_mean'] * bn['weight'] / std)


FUSED_NAME = {'large': 'or_large_reparam', 'orepa': 'orepa_reparam',
              'orepa1x1': 'or1x1_reparam', 'convbn': 'conv'}


def official_deploy(state, modules):
    """What the official ``convert.py`` saves: every module switched to deploy."""
    deploy = {k: v for k, v in state.items() if k.startswith('linear.')}
    for prefix, kind, *_ in modules:
        kernel, bias = fold_official_bn(official_kernel(state, prefix, kind),
                                        leaves_of(state, f'{prefix}.bn'))
        deploy[f'{prefix}.{FUSED_NAME[kind]}.weight'] = kernel
        deploy[f'{prefix}.{FUSED_NAME[kind]}.bias'] = bias
    return deploy


def official_features(state, modules, depth, x):
    """The official ResNet forward (eval mode), returning the four stage outputs."""
    info = {prefix: (kind, stride) for prefix, kind, _, _, stride in modules}

    def conv(prefix, x, relu=False):
        kind, stride = info[prefix]
        kernel = official_kernel(state, prefix, kind)
        bn = leaves_of(state, f'{prefix}.bn')
        x = F.conv2d(x, kernel, None, stride, kernel.shape[-1] // 2)
        x = F.batch_norm(x, bn['running_mean'], bn['running_var'], bn['weight'], bn['bias'],
                         False, 0.0, BN_EPS)
        return F.relu(x) if relu else x

    x = F.max_pool2d(conv('stage0.conv1', x, relu=True), 3, 2, 1)
    blocks = sorted({p.rsplit('.', 1)[0] for p in info if not p.startswith('stage0')},
                    key=lambda p: tuple(int(t) for t in p.replace('stage', '').split('.')))
    outs = []
    for block in blocks:
        names = [n for n in ('conv1', 'conv2', 'conv3') if f'{block}.{n}' in info]
        out = x
        for i, name in enumerate(names):
            out = conv(f'{block}.{name}', out, relu=i < len(names) - 1)
        shortcut = conv(f'{block}.shortcut', x) if f'{block}.shortcut' in info else x
        x = F.relu(out + shortcut)
        stage, index = (int(t) for t in block.replace('stage', '').split('.'))
        if index == BLOCKS[depth][1][stage - 1] - 1:
            outs.append(x)
    return outs


# ------------------------------------------------------------------------ helpers
def assert_close_rel(actual, expected, rel=1e-4):
    scale = expected.abs().max().clamp_min(1e-12)
    err = (actual - expected).abs().max() / scale
    assert err <= rel, f'relative error {err:.3g} > {rel}'


def mmrep_model(depth, width, deploy=False):
    planes = int(64 * width)
    return OREPAResNet(depth=depth, stem_channels=planes, base_channels=planes,
                       deploy=deploy).eval()


def image(seed=1, size=48):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -------------------------------------------------------------------------- tests
@pytest.mark.parametrize('groups', [1, 2, 8])
@pytest.mark.parametrize('mirror', [False, True])
def test_kernel_generator_matches_the_official_one(groups, mirror):
    gen = torch.Generator().manual_seed(groups)
    official = official_orepa(gen, 16, 24, groups)
    expected = official_orepa_kernel(official, groups)
    kernel_gen = OREPAKernel(16, 24, 3, groups)
    kernel_gen.load_state_dict(orepa_kernel_from_official(without_buffers(official), mirror),
                               strict=True)
    with torch.no_grad():
        actual = kernel_gen()
    assert_close_rel(actual, expected.flip(-2, -1) if mirror else expected, 1e-6)


def test_without_the_interleave_the_grouped_kernel_differs():
    """The pointwise de-interleave is needed: the raw official rows give another kernel."""
    gen = torch.Generator().manual_seed(0)
    official = official_orepa(gen, 16, 24, 2)
    kernel_gen = OREPAKernel(16, 24, 3, 2)
    converted = orepa_kernel_from_official(without_buffers(official))
    kernel_gen.load_state_dict(dict(converted, weight_pw=official['weight_orepa_gconv_pw']))
    with torch.no_grad():
        err = (kernel_gen() - official_orepa_kernel(official, 2)).abs().max()
    assert err > 1e-2


def test_stem_kernel_equals_the_official_chained_cross_correlation():
    state, _ = official_resnet(18, width=0.25)
    conversion = convert(state, 'official', 'orepa-resnet18')
    model = mmrep_model(18, 0.25)
    model.load_state_dict(conversion.state_dict, strict=True)
    with torch.no_grad():
        actual = model.stem[0].kernel_gen()
    expected = official_large_kernel(state, 'stage0.conv1')
    assert actual.shape == (16, 3, 7, 7)
    assert_close_rel(actual, expected, 1e-6)
    # renaming alone (no mirroring of the later layers) gives another stem
    for i in (1, 2):
        leaves = without_buffers(leaves_of(state, f'stage0.conv1.weight{i}'))
        model.stem[0].kernel_gen.layers[i].load_state_dict(orepa_kernel_from_official(leaves))
    with torch.no_grad():
        renamed_only = model.stem[0].kernel_gen()
    assert (renamed_only - expected).abs().max() > 0.1 * expected.abs().max()


@pytest.mark.parametrize('depth', [18, 50])
def test_converted_training_checkpoint_gives_the_official_features(depth):
    state, modules = official_resnet(depth, width=0.25, seed=depth)
    conversion = convert(state, 'official', f'orepa-resnet{depth}')
    assert not conversion.deploy
    assert 'linear.weight' in conversion.dropped and 'linear.bias' in conversion.dropped
    assert 'stage0.conv1.weight1.weight_orepa_prior' in conversion.dropped
    assert 'stage1.0.conv2.id_tensor' in conversion.dropped
    assert not any(k.endswith(BUFFERS) for k in conversion.state_dict)
    model = mmrep_model(depth, 0.25)
    model.load_state_dict(conversion.state_dict, strict=True)
    x = image()
    with torch.no_grad():
        actual = model(x)
        expected = official_features(state, modules, depth, x)
    assert len(actual) == len(expected) == 4
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        assert_close_rel(a, e)


@pytest.mark.parametrize('depth', [18, 50])
def test_converted_deploy_checkpoint_gives_the_official_features(depth):
    state, modules = official_resnet(depth, width=0.25, seed=depth + 1)
    deploy_state = official_deploy(state, modules)
    conversion = convert(deploy_state, 'official', f'orepa-resnet{depth}')
    assert conversion.deploy
    assert conversion.dropped == ['linear.weight', 'linear.bias']
    model = mmrep_model(depth, 0.25, deploy=True)
    model.load_state_dict(conversion.state_dict, strict=True)
    x = image(2)
    with torch.no_grad():
        actual = model(x)
        expected = official_features(state, modules, depth, x)
    for a, e in zip(actual, expected):
        assert_close_rel(a, e)


@pytest.mark.parametrize('depth', [18, 34, 50, 101])
def test_full_width_official_checkpoints_fit_every_arch(depth):
    state, modules = official_resnet(depth, meta=True)
    with torch.device('meta'):
        train_model = OREPAResNet(depth=depth)
        deploy_model = OREPAResNet(depth=depth, deploy=True)
    for official, target in ((state, train_model),
                             (official_deploy_shapes(state, modules), deploy_model)):
        conversion = convert(official, 'official', f'orepa-resnet{depth}')
        expected = target.state_dict()
        assert set(conversion.state_dict) == set(expected)
        assert all(conversion.state_dict[k].shape == expected[k].shape for k in expected)
    assert sorted(ARCHS) == ['orepa-resnet101', 'orepa-resnet18', 'orepa-resnet34',
                             'orepa-resnet50']


def official_deploy_shapes(state, modules):
    """The deploy-form keys and shapes (values irrelevant) of a training state."""
    deploy = {}
    for prefix, kind, cin, cout, _ in modules:
        size = {'large': 7, 'orepa': 3}.get(kind, 1)
        deploy[f'{prefix}.{FUSED_NAME[kind]}.weight'] = randn(None, cout, cin, size, size)
        deploy[f'{prefix}.{FUSED_NAME[kind]}.bias'] = randn(None, cout)
    return deploy


# ---------------------------------------------------------------------- refusals
@pytest.fixture(scope='module')
def r18_state():
    return official_resnet(18, width=0.25)[0]


def test_wrong_depth_is_refused_naming_the_arch_found(r18_state):
    with pytest.raises(ConversionError, match=r'basic blocks \(2, 2, 2, 2\).*OREPA-ResNet-18.*'
                                              r'orepa-resnet50.*bottleneck'):
        convert(r18_state, 'official', 'orepa-resnet50')
    with pytest.raises(ConversionError, match=r'OREPA-ResNet-18.*orepa-resnet34'):
        convert(r18_state, 'official', 'ORePA-ResNet34')


def test_wrong_depth_refusal_names_the_keys():
    """Issue 16 item 10: an R-18 file given as R-34 names keys, as RepVGG's refusals do."""
    state = official_resnet(18, meta=True)[0]
    with pytest.raises(ConversionError) as info:
        convert(state, 'official', 'orepa-resnet34')
    message = str(info.value)
    assert 'missing keys (stages.0.2.conv1.bn.bias' in message, message
    assert 'stages.2.5.conv2.kernel_gen' in message or 'stages.0.2.' in message


def test_unknown_keys_source_and_arch_are_refused(r18_state):
    bad = dict(r18_state, **{'stage1.0.conv1.weight_dbb_origin': torch.zeros(1),
                             'features.0.weight': torch.zeros(1)})
    with pytest.raises(ConversionError, match=r'2 keys.*weight_dbb_origin.*features\.0\.weight'):
        convert(bad, 'official', 'orepa-resnet18')
    with pytest.raises(ConversionError, match='timm'):
        convert(r18_state, 'timm', 'orepa-resnet18')
    with pytest.raises(ConversionError, match='orepa-resnet152'):
        convert(r18_state, 'official', 'orepa-resnet152')


def test_missing_kernel_leaf_is_refused_naming_it(r18_state):
    bad = {k: v for k, v in r18_state.items() if k != 'stage2.1.conv1.weight_orepa_gconv_dw'}
    with pytest.raises(ConversionError, match=r'stages\.1\.1\.conv1.*weight_orepa_gconv_dw'):
        convert(bad, 'official', 'orepa-resnet18')


def test_mixed_training_and_deploy_forms_are_refused(r18_state):
    bad = dict(r18_state)
    bad['stage1.0.conv1.orepa_reparam.weight'] = torch.zeros(16, 16, 3, 3)
    with pytest.raises(ConversionError, match='mixes the deploy form'):
        convert(bad, 'official', 'orepa-resnet18')
