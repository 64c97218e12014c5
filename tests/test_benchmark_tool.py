"""The benchmark's measuring logic: verdict rules, pairing, plain limits, same-work twins,
test sizes, the plot and the command line. No test here depends on a timing."""
import json
import os.path as osp
import random

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import mmrep
from conftest import REPO_ROOT, load_tool
from mmrep.benchmark import limit as limit_mod
from mmrep.benchmark import models, report, run, stats, timing
from mmrep.benchmark.limit import PlainLimit, record
from mmrep.benchmark.runtimes import _AdaptiveAvgPoolExact


# ---------------------------------------------------------------- stats and verdicts

@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.1, 10), min_size=1, max_size=40))
def test_median_interval_holds_the_median(values):
    low, high, coverage = stats.median_interval(values)
    median = sorted(values)[(len(values) - 1) // 2]
    assert low <= median <= high
    assert low in values and high in values
    assert 0 <= coverage < 1


def test_median_interval_coverage_is_exact_and_at_least_asked():
    # n = 15: k = 4 -> [x_(4), x_(12)], coverage 1 - 2 P(Bin(15, 1/2) <= 3) = 0.9648
    low, high, coverage = stats.median_interval(list(range(1, 16)))
    assert (low, high) == (4, 12)
    assert coverage == pytest.approx(0.96484375)
    # fewer than 6 values cannot reach 95%: the full range, its coverage stated
    low, high, coverage = stats.median_interval([3.0, 1.0, 2.0, 5.0, 4.0])
    assert (low, high) == (1.0, 5.0)
    assert coverage == pytest.approx(1 - 2 / 32)


def test_median_interval_covers_the_true_median_as_often_as_it_says():
    rng = random.Random(0)
    hits, trials = 0, 2000
    for _ in range(trials):  # log-normal "timings" with true median exp(0) = 1
        low, high, _ = stats.median_interval([rng.lognormvariate(0, 0.3) for _ in range(15)])
        hits += low <= 1.0 <= high
    assert hits / trials >= 0.95


def test_verdict_is_inconclusive_when_the_spread_covers_the_margin():
    def summary(low, high):
        return stats.RatioSummary((low + high) / 2, low, high, 0.96, 15)
    assert stats.verdict(summary(0.95, 1.02), at_most=1.03) == stats.MET
    assert stats.verdict(summary(1.04, 1.10), at_most=1.03) == stats.NOT_MET
    assert stats.verdict(summary(0.99, 1.06), at_most=1.03) == stats.INCONCLUSIVE
    assert stats.verdict(summary(3.1, 3.5), at_least=3) == stats.MET
    assert stats.verdict(summary(2.0, 2.9), at_least=3) == stats.NOT_MET
    assert stats.verdict(summary(2.8, 3.3), at_least=3) == stats.INCONCLUSIVE
    with pytest.raises(ValueError, match='exactly one'):
        stats.verdict(summary(1, 1))
    few = stats.summarize_ratios([0.5, 0.6, 0.55])  # 3 pairs: a 75% interval
    assert few.coverage == pytest.approx(0.75)
    assert stats.verdict(few, at_most=1.03) == stats.INCONCLUSIVE
    assert stats.verdict(stats.summarize_ratios([0.5, 0.6, 0.55, 0.52, 0.58]),
                         at_most=1.03) == stats.MET


def test_paired_ratios_need_samples_of_the_same_rounds():
    assert stats.paired_ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]
    with pytest.raises(ValueError, match='same rounds'):
        stats.paired_ratios([1.0, 2.0, 3.0], [1.0, 2.0])


# ---------------------------------------------------------------- interleaved timing

class FakeClock:
    """Time that drifts: every call costs its runner's base time x a load growing with
    the number of calls made so far (a machine getting busier)."""

    def __init__(self, base, drift=0.02):
        self.base, self.drift, self.calls, self.order = base, drift, 0, []

    def __call__(self, run, calls):
        name = run()
        self.order.append(name)
        self.calls += 1
        return self.base[name] * (1 + self.drift * self.calls)


def _runners(names):
    return {n: (lambda n=n: n) for n in names}


def test_interleaving_rotates_the_order_every_round():
    clock = FakeClock(dict(a=1.0, b=1.0, c=1.0))
    samples = timing.interleaved(_runners('abc'), rounds=6, warmup=1, clock=clock)
    assert all(len(s.ms) == 6 for s in samples.values())
    rounds = [clock.order[3 + 3 * r: 6 + 3 * r] for r in range(6)]
    assert rounds[:3] == [list('abc'), list('bca'), list('cab')]
    assert [r[0] for r in rounds] == list('abcabc')  # no runner always goes first


def test_paired_interleaved_ratios_cancel_drift_where_one_after_the_other_does_not():
    equal = dict(a=10.0, b=10.0)
    clock = FakeClock(equal)
    samples = timing.interleaved(_runners('ab'), rounds=15, warmup=1, clock=clock)
    summary = stats.compare_paired(samples['a'].ms, samples['b'].ms)
    assert stats.verdict(summary, at_most=1.03) == stats.MET  # same cost: not "slower"
    # the same drift measured A's rounds then B's makes B look 30% slower
    clock = FakeClock(equal)
    a = timing.interleaved(_runners('a'), rounds=15, warmup=1, clock=clock)['a'].ms
    b = timing.interleaved(_runners('b'), rounds=15, warmup=1, clock=clock)['b'].ms
    assert stats.verdict(stats.compare_paired(b, a), at_most=1.03) == stats.NOT_MET


def test_rounds_fit_the_time_budget_but_never_below_the_minimum():
    assert timing.plan_rounds(per_round_ms=100, rounds=15, max_seconds=1.0) == 10
    assert timing.plan_rounds(per_round_ms=10_000, rounds=15, max_seconds=1.0) == 5
    assert timing.plan_rounds(per_round_ms=10_000, rounds=3, max_seconds=1.0) == 3
    assert timing.plan_rounds(per_round_ms=1, rounds=15, max_seconds=None) == 15
    assert timing.calls_per_sample(3.0, 20.0) == 7
    assert timing.calls_per_sample(50.0, 20.0) == 1


def test_load_warning_when_other_processes_take_the_cores():
    assert run.load_warning(0.3, cpus=2, threads=1) is None
    assert run.load_warning(0.9, cpus=2, threads=1) is None
    assert 'load average 1.50' in run.load_warning(1.5, cpus=2, threads=1)
    assert run.load_warning(0.5, cpus=2, threads=2) is not None
    # while timing, the run's own threads are part of the load average
    assert run.load_warning(2.0, cpus=2, threads=2, own=2) is None
    assert run.load_warning(3.1, cpus=2, threads=2, own=2) is not None


# ---------------------------------------------------------------- the plain limit

def _conv_flops(fn):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


class _Mixed(nn.Module):
    """conv+ReLU, conv without activation, conv+Hardswish, an add, SE-like gating."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 1)
        self.d = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        x = torch.relu(self.a(x))
        y = self.b(x) + x  # no activation: the add reads b's output first
        z = nn.functional.hardswish(self.c(y))
        return self.d(z) * torch.sigmoid(z.mean((2, 3), keepdim=True))


def test_plain_limit_keeps_each_convs_own_activation_and_nothing_else():
    model, x = _Mixed().eval(), torch.rand(1, 3, 16, 16)
    limit = PlainLimit(model, (x,))
    assert limit.convs == 4
    acts = [limit_mod.op_name(s.activation[0]) if s.activation else None for s in limit.steps]
    assert acts == ['relu', None, 'hardswish', None]
    assert [s.source for s in limit.steps] == [('input', 0), ('step', 0), None, ('step', 2)]
    assert set(limit.feeds) == {2}  # c reads the add's output: a preallocated tensor
    assert limit.feeds[2].shape == (1, 8, 16, 16)


@pytest.mark.parametrize('backbone', [dict(type='RepVGG', arch='A0'),
                                      dict(type='RepGhostNet', widen_factor=1.0),
                                      dict(type='OREPAResNet', depth=18)])
def test_plain_limit_is_a_lower_bound_in_flops_and_ops(backbone):
    from mmdet.registry import MODELS
    torch.manual_seed(0)
    fused = mmrep.reparameterize_model(MODELS.build(backbone).eval())
    x = torch.rand(1, 3, 64, 64)
    limit = PlainLimit(fused, (x,))
    model_ops = record(lambda: fused(x), (x,)).ops
    limit_ops = record(lambda: limit()).ops
    assert _conv_flops(lambda: limit()) == _conv_flops(lambda: fused(x)) > 0
    assert limit_ops['conv2d'] == model_ops['conv2d']
    assert not limit_ops - model_ops  # every op the limit runs, the model runs as often
    assert limit_ops.total() < model_ops.total() or set(model_ops) == {'conv2d', 'relu'}
    # same convs in the same order: weights and arguments
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert [s.weight.shape for s in limit.steps] == [c.weight.shape for c in convs]
    assert [s.groups for s in limit.steps] == [c.groups for c in convs]


def test_plain_limit_adds_no_relu_where_the_model_has_none():
    from mmdet.registry import MODELS
    fused = mmrep.reparameterize_model(MODELS.build(dict(type='RepGhostNet')).eval())
    x = torch.rand(1, 3, 64, 64)
    limit = PlainLimit(fused, (x,))
    model_ops = record(lambda: fused(x), (x,)).ops
    assert limit.activations()['relu'] <= model_ops['relu'] < limit.convs
    assert sum(s.activation is None for s in limit.steps) > 0


def test_plain_limit_of_a_pure_conv_relu_chain_is_the_same_network():
    from mmrep.models.backbones.repvgg import RepVGG
    fused = mmrep.reparameterize_model(RepVGG(arch='A0', out_indices=(3,))).eval()
    x = torch.rand(1, 3, 32, 32)
    limit = PlainLimit(fused, (x,))
    assert limit.feeds == {}
    with torch.no_grad():
        assert torch.allclose(limit(), fused(x)[0], atol=1e-5)


def test_plain_limit_shares_weights_the_model_shares():
    conv = nn.Conv2d(4, 4, 3, padding=1)

    class Shared(nn.Module):  # one head applied to three levels, as RetinaNet's
        def forward(self, xs):
            return [conv(x) for x in xs]
    xs = [torch.rand(1, 4, s, s) for s in (16, 8, 4)]
    limit = PlainLimit(lambda *a: Shared()(list(a)), xs)
    assert limit.convs == 3
    assert len({id(s.weight) for s in limit.steps}) == 1
    assert limit.steps[0].weight is not conv.weight  # a copy, made once
    limit.to_memory_format(torch.channels_last)
    assert len({id(s.weight) for s in limit.steps}) == 1


def test_plain_limit_refuses_a_model_without_convs():
    with pytest.raises(ValueError, match='no conv2d'):
        PlainLimit(nn.ReLU(), (torch.rand(1, 3, 4, 4),))


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 20), w=st.integers(1, 20), out_h=st.integers(1, 7),
       out_w=st.integers(1, 7))
def test_exported_adaptive_pool_equals_torch(h, w, out_h, out_w):
    x = torch.rand(2, 3, h, w)
    want = nn.AdaptiveAvgPool2d((out_h, out_w))(x)
    got = _AdaptiveAvgPoolExact((out_h, out_w))(x)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)


# ---------------------------------------------------------------- same-work twins

def _twin_pairs():
    return [(name, spec.peers[0]) for name, spec in models.MODEL_SPECS.items()
            if spec.peers and models.MODEL_SPECS[spec.peers[0]].kind == 'timm']


@pytest.mark.parametrize('name,twin', _twin_pairs())
def test_timm_twins_do_the_same_conv_work(name, twin):
    pytest.importorskip('timm')
    cases = [models.build_case(models.MODEL_SPECS[n], size=(64, 64)) for n in (name, twin)]
    fused = [c.fuse(c.model) for c in cases]
    flops = [_conv_flops(lambda m=m, c=c: m(*c.inputs)) for m, c in zip(fused, cases)]
    assert flops[0] == flops[1] > 0
    outs = [m(*c.inputs)[-1] for m, c in zip(fused, cases)]
    assert outs[0].shape == outs[1].shape  # the same last feature map


def test_timm_repghostnet_forward_features_does_more_work_than_the_backbone():
    timm = pytest.importorskip('timm')
    twin = timm.create_model('repghostnet_100').eval()
    x = torch.rand(1, 3, 64, 64)
    extra = _conv_flops(lambda: twin.forward_features(x)) - _conv_flops(
        lambda: models.TIMM_FORWARDS['repghostnet_without_final_conv'](twin, x))
    assert extra == 2 * 160 * 960 * 2 * 2  # the final 1x1 160->960 conv on a 2x2 map


# ---------------------------------------------------------------- models and sizes

def _config(name):
    return models.load_config(models.ModelSpec('x', 'detector', config=f'mmrep::configs/{name}'))


def test_test_size_is_the_keep_ratio_resize_of_the_image_padded():
    cfg = _config('retinanet_repghost_1x.py')
    assert models.config_input_size(cfg, (480, 640)) == (800, 1088)  # 800x1067 padded to 32
    assert models.config_input_size(cfg, (800, 800)) == (800, 800)
    assert models.config_input_size(cfg, (300, 1000)) == (416, 1344)  # long side 1333
    shapes = _config('retinanet_repvgg-a0_reppafpn-slim_shapes.py')
    assert models.config_input_size(shapes, models.SHAPES_IMAGE) == (192, 192)


def test_test_size_of_a_segmentor_and_a_config_without_resize():
    cfg = models.load_config(models.ModelSpec(
        'x', 'segmentor', config='mmrep::configs/upernet_replknet-31b_ade20k.py'))
    assert models.config_input_size(cfg, (480, 640)) == (512, 683)  # no test padding in mmseg
    del cfg.test_dataloader.dataset.pipeline[1]  # the Resize
    with pytest.raises(ValueError, match='no Resize.*--input-size'):
        models.config_input_size(cfg, (480, 640))


def test_spec_from_config_knows_detectors_and_refuses_other_models(tmp_path):
    spec = models.spec_from_config('mmrep::configs/retinanet_repvgg-a0_reppafpn-slim_shapes.py')
    assert (spec.kind, spec.name) == ('detector', 'retinanet_repvgg-a0_reppafpn-slim_shapes')
    cfg = tmp_path / 'cls.py'
    cfg.write_text("model = dict(type='ImageClassifier', backbone=dict(type='ResNet'))\n")
    with pytest.raises(ValueError, match='neither an mmdet detector nor an mmseg segmentor'):
        models.spec_from_config(str(cfg))
    with pytest.raises(FileNotFoundError, match='checkpoint'):
        models.spec_from_config(str(cfg), checkpoint=str(tmp_path / 'missing.pth'))


def test_every_spec_round_trips_through_json_and_names_known_peers():
    for spec in models.MODEL_SPECS.values():
        again = models.ModelSpec.from_dict(json.loads(json.dumps(spec.as_dict())))
        assert again == spec
        assert all(p in models.MODEL_SPECS for p in spec.peers)
    assert 'RepVGG-A0 (timm)' not in models.default_model_names()  # timed as a peer


# ---------------------------------------------------------------- report and plot

def _row(model, path, samples, group='g', batch=1, threads=1, **extra):
    low, high, _ = stats.median_interval(samples)
    return dict(model=model, path=path, batch=batch, threads=threads, group=group,
                input=[1, 3, 224, 224], samples_ms=samples,
                median_ms=sorted(samples)[len(samples) // 2], ci_ms=[low, high], **extra)


def test_ratios_are_paired_within_a_group_only():
    a = _row('M', 'fused', [10, 11, 12], group='g1')
    b = _row('M', 'unfused', [20, 22, 24], group='g2')
    with pytest.raises(ValueError, match='not paired'):
        report.paired(a, b)
    b['group'] = 'g1'
    assert report.paired(a, b).median == pytest.approx(0.5)


def test_comparisons_put_the_model_beside_its_peer_path_for_path():
    rows = [_row('M', p, [10.0] * 6) for p in ('fused', 'onnxruntime')]
    rows += [_row('M (timm)', p, [11.0] * 6) for p in ('fused', 'onnxruntime')]
    cmp = report.comparisons(rows)
    peer = [c for c in cmp if c['b_model'] == 'M (timm)']
    assert [(c['a_path'], c['b_path']) for c in peer] == [('fused', 'fused'),
                                                          ('onnxruntime', 'onnxruntime')]
    assert peer[0]['median'] == pytest.approx(10 / 11, abs=1e-4)
    text = report.markdown(rows)
    assert 'Target' not in text and 'issue' not in text  # targets live in benchmarks/


def test_plot_bars_start_at_zero_with_values_input_size_and_threads():
    rows = [_row('RepVGG-A0', 'fused', [14.7] * 6, threads=2),
            _row('RepVGG-A0', 'onnxruntime', [22.6] * 6, threads=2)]
    fig = report.plot(rows)
    ax = fig.axes[0]
    assert ax.get_xscale() == 'linear' and ax.get_xlim()[0] == 0
    assert [round(p.get_x(), 6) for p in ax.patches] == [0, 0]  # every bar starts at 0
    assert sorted(round(p.get_width(), 1) for p in ax.patches) == [14.7, 22.6]
    assert {t.get_text().strip() for t in ax.texts} == {'14.7', '22.6'}
    assert '224x224' in ax.get_title() and '2 thread' in ax.get_title()


# ---------------------------------------------------------------- targets (benchmarks/)

def _targets():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'mmrep_benchmark_targets', osp.join(REPO_ROOT, 'benchmarks', 'targets.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_twin_target_passes_inconclusive_and_fails_only_a_clear_loss():
    targets = _targets()
    rows = [_row('A', 'fused', [10.0, 10.1, 10.2, 9.9, 10.0, 10.1], group='a'),
            _row('A (timm)', 'fused', [10.0] * 6, group='a'),            # within 3%
            _row('A', 'onnxruntime', [10.0, 10.8, 9.6, 10.5, 9.8, 10.9], group='a'),
            _row('A (timm)', 'onnxruntime', [10.0] * 6, group='a'),      # spread covers 3%
            _row('B', 'fused', [12.0, 12.2, 12.1, 12.3, 12.0, 12.1], group='b'),
            _row('B (timm)', 'fused', [10.0] * 6, group='b')]            # clear loss
    verdicts = [line['verdict'] for line in targets.twins(rows)]
    assert verdicts == ['met', 'inconclusive (passes: no clear loss)', 'not met']


def test_openvino_target_pairs_the_faster_openvino_path_with_onnxruntime(tmp_path):
    targets = _targets()
    g = 'RepLKNet-31B'
    rows = [_row(g, 'onnxruntime', [100.0] * 8, group=g),
            _row(g, 'openvino', [30.0, 31, 29, 30, 32, 30, 31, 30], group=g,
                 precision='bf16', inference_precision='bf16'),
            _row(g, 'openvino_int8', [40.0] * 8, group=g)]
    lines = targets.openvino_vs_onnxruntime(rows)
    line = next(x for x in lines if x['target'].startswith('RepLKNet-31B, 1 thread'))
    assert line['verdict'] == 'met' and '`openvino` (bf16)' in line['measured']
    assert next(x for x in lines if '2 thread' in x['target'])['verdict'] == 'not measured'
    report_path = tmp_path / 'report.json'
    report_path.write_text(json.dumps(dict(openvino=dict(
        bbox_mAP_fp32=0.420, bbox_mAP_int8=0.405, eval_image_ids=list(range(30))))))
    (acc,) = targets.openvino_int8_accuracy(str(report_path))
    assert acc['verdict'] == 'not met' and 'drop 1.5 points on 30 held-out' in acc['measured']


# ---------------------------------------------------------------- the command line

def _tool():
    return load_tool('benchmark')


def test_help_shows_defaults_and_no_internal_target_names(capsys):
    with pytest.raises(SystemExit):
        _tool().parse_args(['--help'])
    out = capsys.readouterr().out
    assert '--threads THREADS' in out and '(default: 1)' in out
    assert '(default: 224 224)' in out and '(default: 15)' in out
    assert 'issue' not in out.lower() and 'target' not in out.lower()


def test_command_line_refuses_bad_requests(capsys):
    tool = _tool()
    for argv, message in ((['--checkpoint', 'x.pth'], '--checkpoint needs --config'),
                          (['--models', 'RepVGG-Z9'], "unknown model(s) ['RepVGG-Z9']"),
                          (['--models', 'RepVGG-A0', '--threads', '0'], 'at least 1')):
        with pytest.raises(SystemExit):
            tool.parse_args(argv)
        assert message in capsys.readouterr().err


SLIM = 'mmrep::configs/retinanet_repvgg-a0_reppafpn-slim_shapes.py'
TINY = ['--input-size', '64', '64', '--rounds', '3', '--min-sample-ms', '1', '--no-memory']


def _save_checkpoint(path, fused: bool):
    case = models.build_case(models.spec_from_config(SLIM), input_size=(64, 64))
    model = case.model.module
    if fused:
        mmrep.reparameterize_model(model, inplace=True)
    torch.save(dict(state_dict=model.state_dict()), path)


def test_users_config_and_checkpoint_timed_fused_and_unfused(tmp_path):
    ckpt = tmp_path / 'epoch_1.pth'
    _save_checkpoint(ckpt, fused=False)
    out = tmp_path / 'bench'
    rows = _tool().main(['--config', SLIM, '--checkpoint', str(ckpt), '--paths', 'unfused',
                         'fused', 'onnxruntime', '--out', str(out)] + TINY)
    assert [(r['model'], r['path']) for r in rows] == [
        ('retinanet_repvgg-a0_reppafpn-slim_shapes', p) for p in ('unfused', 'fused',
                                                                    'onnxruntime')]
    assert all(r['input'] == [1, 3, 64, 64] and r['rounds'] == 3 and 'error' not in r
               for r in rows)
    assert rows[1]['fusion_ms'] > 0 and rows[1]['params_m'] < rows[0]['params_m']
    data = json.loads((out / 'benchmark.json').read_text())
    assert data['runs'][0]['threads'] == 1 and '--checkpoint' in data['runs'][0]['command']
    assert (out / 'benchmark.png').stat().st_size > 0
    assert 'fusing' in (out / 'benchmark.md').read_text()


def test_a_fused_checkpoint_runs_the_fused_paths_and_says_why_unfused_cannot(tmp_path):
    ckpt = tmp_path / 'fused.pth'
    _save_checkpoint(ckpt, fused=True)
    rows = _tool().main(['--config', SLIM, '--checkpoint', str(ckpt), '--paths', 'unfused',
                         'fused', '--out', str(tmp_path / 'bench')] + TINY)
    unfused, fused = rows
    assert 'checkpoint is fused' in unfused['error'] and 'median_ms' in fused
    assert any('fused checkpoint' in note for note in fused['notes'])


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    ckpt = tmp_path / 'other.pth'
    torch.save(dict(state_dict=dict(weight=torch.zeros(3))), ckpt)
    with pytest.raises(SystemExit, match='other.pth does not match the model built from'):
        _tool().main(['--config', SLIM, '--checkpoint', str(ckpt), '--out',
                      str(tmp_path / 'bench')] + TINY)


def test_append_replaces_rows_of_the_same_setting_and_keeps_the_others(tmp_path):
    out = str(tmp_path / 'bench')
    common = ['--models', 'RepVGG-A0', '--no-peers', '--size', '32', '32', '--out', out,
              '--rounds', '3', '--min-sample-ms', '1', '--no-memory']
    _tool().main(common + ['--paths', 'fused', 'plain_limit'])
    with pytest.raises(SystemExit, match='exists: --append to add to it, --overwrite'):
        _tool().main(common + ['--paths', 'fused'])  # a finished run is never replaced silently
    _tool().main(common + ['--paths', 'fused', '--append', '--threads', '2'])
    _tool().main(common + ['--paths', 'fused', '--append'])
    data = json.loads(open(osp.join(out, 'benchmark.json')).read())
    assert sorted((r['path'], r['threads']) for r in data['rows']) == [
        ('fused', 1), ('fused', 2), ('plain_limit', 1)]
    assert len(data['runs']) == 3
    plain = next(r for r in data['rows'] if r['path'] == 'plain_limit')
    assert plain['convs'] == 22 and plain['activations'] == 22


def test_memory_of_a_row_is_measured_in_a_fresh_process():
    from mmrep.benchmark.memory import memory_isolated
    spec = models.MODEL_SPECS['RepVGG-A0']
    result = memory_isolated(spec, 'fused', 1, [(1, 3, 64, 64)], threads=1, size=(64, 64))
    assert 'memory_error' not in result, result
    # the fused A0 holds 8.3M float32 weights (33 MB); its 64x64 activations are small
    assert 25 < result['resident_mb'] < 60
    assert 0 <= result['peak_mb'] < 30


def test_an_unknown_path_is_refused_by_name(tmp_path):
    from mmrep.benchmark.runtimes import PathBuilder
    case = models.build_case(models.MODEL_SPECS['RepVGG-A0'], size=(32, 32))
    with pytest.raises(ValueError, match="unknown path 'no_such_path'"):
        PathBuilder(case, 1, str(tmp_path)).runner('no_such_path')


def test_openvino_paths_run_the_fused_export_and_record_the_precision(tmp_path):
    pytest.importorskip('openvino')
    if mmrep.compat.nncf_unavailable():
        pytest.skip(mmrep.compat.nncf_unavailable())
    from mmrep.benchmark.runtimes import PathBuilder
    case = models.build_case(models.MODEL_SPECS['RepVGG-A0'], size=(32, 32))
    builder = PathBuilder(case, 1, str(tmp_path))
    fp, int8 = builder.runner('openvino'), builder.runner('openvino_int8')
    from mmrep.deploy.openvino import default_precision
    assert fp.info['inference_precision'] == default_precision()  # OpenVINO's own choice
    assert int8.info['precision'] == 'int8'
    assert osp.isfile(builder.artifacts['openvino_int8'])  # the IR the memory child reads
    with torch.no_grad():
        want = builder.fused()(*case.inputs)
    got = fp.call()
    assert [g.shape for g in got] == [tuple(w.shape) for w in want]
    scale = want[-1].abs().max().item()
    assert abs(got[-1] - want[-1].numpy()).max() < 0.05 * scale  # bf16 is ~1% of the scale
    assert len(int8.call()) == len(want)


def test_onnxruntime_int8_path_quantizes_every_op_type_and_runs(tmp_path):
    """The benchmark's INT8 row: random-input calibration of a fused conv net, QDQ nodes in the
    graph, and outputs near fp32's (op_types=None once raised TypeError inside onnxruntime)."""
    import onnx
    import onnxruntime as ort
    from mmrep.benchmark.runtimes import export_onnx, onnx_feeds, quantize_onnx_random
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1)).eval()
    x = torch.rand(1, 3, 32, 32)
    fp32 = export_onnx(net, (x,), str(tmp_path / 'fp32.onnx'))
    int8 = quantize_onnx_random(fp32, [x], str(tmp_path / 'int8.onnx'))
    ops = {node.op_type for node in onnx.load(int8).graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear'} <= ops
    session = ort.InferenceSession(int8, providers=['CPUExecutionProvider'])
    out = session.run(None, onnx_feeds(int8, [x]))[0]
    ref = net(x).detach().numpy()
    assert abs(out - ref).max() <= 0.05 * abs(ref).max() + 1e-3
