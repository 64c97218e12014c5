"""OREPA's training cost: one step of OREPA-ResNet-18 vs the same branches DBB-style vs ResNet-18.

    python benchmarks/orepa_training_cost.py [--batch 8] [--size 224] [--rounds 7]
                                             [--threads 1] [--out FILE]

One training step = forward, a scalar loss, backward and an SGD update, in
train mode (BN batch statistics), batch 8, 224x224, on the CPU. Three
networks, all without the classifier (outputs of the last stage):

* ``plain``: torchvision's ResNet-18;
* ``OREPA``: mmrep's OREPA-ResNet-18: each conv generates ONE kernel from its
  six linear branches, then one conv and one BN (online re-parameterization);
* ``DBB-style``: the same branch topology computed as DBB does, every branch
  in feature space with its own BN and the branches summed: for a ``k x k``
  OREPA conv ``kxk``, ``1x1 -> avg-pool``, ``1x1 -> fixed prior filter``,
  ``1x1 -> kxk``, ``1x1`` and ``depthwise kxk (x8) -> 1x1``; for the ``1x1``
  shortcut convs ``1x1`` and ``1x1 -> 1x1``; the 7x7 stem is its three 3x3
  layers in sequence, each DBB-style, the first with the stride 2 (so all run
  at the stem's output resolution, as a DBB 7x7 stem does). Built here from the OREPA model's own
  weights (:class:`DBBStyleConv`); it is a cost model, not a trained variant.

Time: the three networks' steps interleaved, one of each per round in
rotating order (:func:`mmrep.benchmark.timing.interleaved`), after one warm-up
step each; the OREPA / DBB-style time ratio is the median of the paired
per-round ratios with its 95% interval (:mod:`mmrep.benchmark.stats`).
Peak memory: each network alone in a fresh process (after a throw-away first
model), the peak RSS growth during two steps (:mod:`mmrep.engine.measure`):
gradients are freed before each step, so their allocation counts, and the
first step allocates the optimizer state. The official OREPA README's GPU
figures are printed beside ours.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mmrep.blocks.orepa import (OREPA, OREPA1x1, OREPA1x1Kernel, OREPAKernel, OREPALargeConv,
                                _OnlineReparamConv)
from mmrep.benchmark.stats import compare_paired
from mmrep.benchmark.timing import interleaved
from mmrep.engine.measure import PeakRSS
from mmrep.models.backbones.orepa_resnet import OREPAResNet

# official OREPA README, ResNet-18 on GPU: memory (GB) and seconds per training batch
OFFICIAL = {'plain': (4.2, 0.086), 'DBB-style': (7.5, 0.241), 'OREPA': (5.2, 0.120)}


class _Branch(nn.Module):
    """``BN(f(x))``: one branch in feature space, ``f`` a sequence of conv calls."""

    def __init__(self, convs, channels: int):
        super().__init__()
        self.convs = convs  # callables, applied in order
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        for step in self.convs:
            x = step(x)
        return self.bn(x)


def _conv(weight: torch.Tensor, **kwargs):
    return lambda x: F.conv2d(x, weight, None, **kwargs)


def _kxk_branches(gen: OREPAKernel, stride: int, padding: int, dilation: int) -> nn.ModuleList:
    k, g, cin = gen.kernel_size, gen.groups, gen.in_channels
    out = gen.out_channels
    spatial = dict(stride=stride, padding=padding, dilation=dilation)
    prior = gen.prior[:, None]  # (O, 1, k, k): one fixed filter per output channel
    return nn.ModuleList([
        _Branch([_conv(gen.weight_origin, groups=g, **spatial)], out),
        _Branch([_conv(gen.weight_avg, groups=g),
                 lambda x: F.avg_pool2d(x, k, stride, padding)], out),
        _Branch([_conv(gen.weight_prior, groups=g), _conv(prior, groups=out, **spatial)], out),
        _Branch([lambda x: F.conv2d(x, gen.weight_1x1_kxk_first + gen.identity_1x1, groups=g),
                 _conv(gen.weight_1x1_kxk_second, groups=g, **spatial)], out),
        _Branch([_conv(gen.weight_1x1, groups=g, stride=stride)], out),
        _Branch([_conv(gen.weight_dw, groups=cin, **spatial), _conv(gen.weight_pw, groups=g)],
                out),
    ])


class DBBStyleConv(nn.Module):
    """An OREPA conv computed DBB-style: ``act(sum_b BN_b(branch_b(x)))``, its weights shared.

    The generator modules are kept as submodules so their parameters train.
    """

    def __init__(self, block: _OnlineReparamConv):
        super().__init__()
        gen = block.kernel_gen
        args = block.conv_args
        self.gen, self.act = gen, block.act
        if isinstance(block, OREPA):
            self.stages = nn.ModuleList([_kxk_branches(gen, args['stride'], args['padding'],
                                                       args['dilation'])])
        elif isinstance(block, OREPA1x1):
            assert isinstance(gen, OREPA1x1Kernel)
            out, s = args['out_channels'], args['stride']
            self.stages = nn.ModuleList([nn.ModuleList([
                _Branch([_conv(gen.weight_origin, stride=s)], out),
                _Branch([_conv(gen.weight_first, stride=s), _conv(gen.weight_second)], out)])])
        elif isinstance(block, OREPALargeConv):
            # the deep linear stem as its 3x3 layers in sequence; the stride on the
            # first, so they run at the stem's output resolution, as DBB's 7x7 stem
            self.stages = nn.ModuleList(
                _kxk_branches(layer, args['stride'] if i == 0 else 1, 1, 1)
                for i, layer in enumerate(gen.layers))
        else:
            raise TypeError(f'not an OREPA conv: {type(block).__name__}')

    def forward(self, x):
        for branches in self.stages:
            x = sum(branch(x) for branch in branches)
        return self.act(x)


def dbb_style(model: nn.Module) -> nn.Module:
    """Replace (in place) every OREPA conv of ``model`` by its :class:`DBBStyleConv`."""
    for name, child in list(model.named_children()):
        if isinstance(child, _OnlineReparamConv):
            setattr(model, name, DBBStyleConv(child))
        else:
            dbb_style(child)
    return model


NAMES = ('plain', 'OREPA', 'DBB-style')


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == 'plain':
        resnet = torchvision.models.resnet18()
        return nn.Sequential(*list(resnet.children())[:-2])  # up to layer4, as the backbones
    model = OREPAResNet(depth=18, out_indices=(3,))
    return dbb_style(model) if name == 'DBB-style' else model


def training_step(model: nn.Module, batch: int, size: int):
    """A callable doing one training step of ``model`` (train mode, SGD with momentum)."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(batch, 3, size, size)

    def step():
        optimizer.zero_grad(set_to_none=True)  # gradients are allocated inside the step
        out = model(x)
        loss = sum(o.float().mean() for o in (out if isinstance(out, (tuple, list)) else [out]))
        loss.backward()
        optimizer.step()
    return step


def memory_of(name: str, batch: int, size: int) -> dict:
    """Peak RSS growth of two steps of ``name`` (the first allocates the optimizer state),
    meant to run alone in a fresh process (:func:`memory_in_fresh_process`)."""
    model = build(name)
    step = training_step(build(name), batch, size)  # a first model: imports, lazy init
    step()
    del step
    step = training_step(model, batch, size)
    with PeakRSS() as peak:
        step()
        step()
    return dict(peak_mb=None if peak.mb is None else round(peak.mb, 1),
                params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2))


def memory_in_fresh_process(name: str, args) -> dict:
    out = subprocess.run([sys.executable, __file__, '--memory-of', name, '--batch',
                          str(args.batch), '--size', str(args.size), '--threads',
                          str(args.threads)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--rounds', type=int, default=7,
                        help='interleaved rounds: one timed step of each network per round')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--memory-of', choices=NAMES, help=argparse.SUPPRESS)
    parser.add_argument('--out', default=osp.join(osp.dirname(osp.abspath(__file__)),
                                                  'orepa_training_cost.json'))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(memory_of(args.memory_of, args.batch, args.size)))
        return
    load = os.getloadavg()
    results = {name: memory_in_fresh_process(name, args) for name in NAMES}
    steps = {name: training_step(build(name), args.batch, args.size) for name in NAMES}
    samples = interleaved(steps, rounds=args.rounds, warmup=1, min_sample_ms=0, min_rounds=1)
    for name in NAMES:
        results[name].update(step_s=round(statistics.median(samples[name].ms) / 1000, 3),
                             samples_s=[round(v / 1000, 4) for v in samples[name].ms])
    time_ratio = compare_paired(samples['OREPA'].ms, samples['DBB-style'].ms)
    orepa, dbb = results['OREPA'], results['DBB-style']
    ratios = dict(time_orepa_over_dbb=time_ratio.as_dict(),
                  memory_orepa_over_dbb=round(orepa['peak_mb'] / dbb['peak_mb'], 3)
                  if orepa['peak_mb'] and dbb['peak_mb'] else None)
    print(f'\nResNet-18 training step, batch {args.batch}, {args.size}x{args.size}, CPU, '
          f'{args.threads} thread(s) (load average before {load})')
    print(f'{"":10} {"step s":>8} {"peak MB":>9} | official GPU: {"s":>6} {"GB":>5}')
    for name, row in results.items():
        gb, s = OFFICIAL[name]
        print(f'{name:10} {row["step_s"]:8.3f} {row["peak_mb"]!s:>9} | {"":13} {s:6.3f} {gb:5.1f}')
    print(f'OREPA / DBB-style: time {time_ratio} (paired), memory '
          f'{ratios["memory_orepa_over_dbb"]} (official: 0.50, 0.69)')
    with open(args.out, 'w') as f:
        json.dump(dict(command='python benchmarks/orepa_training_cost.py ' + ' '.join(
            f'--{k.replace("_", "-")} {v}' for k, v in vars(args).items()
            if k not in ('out', 'memory_of')),
            load_average_before=load, load_average_after=os.getloadavg(),
            torch=torch.__version__, results=results, ratios=ratios,
            official_gpu={k: dict(memory_gb=v[0], step_s=v[1]) for k, v in OFFICIAL.items()}),
            f, indent=2)


if __name__ == '__main__':
    main()
