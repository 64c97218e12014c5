"""The fast path on two-stage detectors: NCHW for the whole model vs channels_last with mmcv's ops in NCHW.

    python benchmarks/two_stage_fast_path.py [--configs C ...] [--size 800] [--repeats 7]
        [--threads 1] [--out FILE]

mmcv's compiled ops (RoIAlign, deformable convs) read NCHW memory, so the fast
path (:mod:`mmrep.engine.fast_path`) keeps them NCHW and runs the rest of the
model channels_last. The alternative would be NCHW for every model that holds
such an op. This measures both on the shipped Mask R-CNN configs, fused, with
random weights (speed does not depend on them): ``extract_feat`` (backbone and
neck) and a whole ``predict`` on one ``size x size`` image. The layouts (one
model copy each) are interleaved, one call each per round in rotating order
after a warm-up (:func:`mmrep.benchmark.timing.interleaved`); the median, min
and max of ``--repeats`` rounds are printed, with the paired fast path / NCHW
time ratio and its interval (:mod:`mmrep.benchmark.stats`). Run it on a quiet
machine.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import os.path as osp
import statistics

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmrep
from mmrep.benchmark.stats import compare_paired
from mmrep.benchmark.timing import interleaved
from mmrep.engine.fast_path import apply_memory_format

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = ('mask-rcnn_repvgg-a0_reppafpn_1x.py', 'mask-rcnn_orepa-r50_fpn_1x.py')
LAYOUTS = ('contiguous', 'channels_last')


def fused_detector(config: str) -> torch.nn.Module:
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(config if osp.isfile(config) else osp.join(REPO_ROOT, 'configs', config))
    torch.manual_seed(0)
    return mmrep.reparameterize_model(MODELS.build(cfg.model).eval())


def interleaved_ms(model, calls: dict, rounds: int) -> dict:
    """``{(call, layout): Samples}``: every call in both layouts, interleaved round by round
    (:func:`mmrep.benchmark.timing.interleaved`), one copy of the model per layout."""
    layouts = {layout: apply_memory_format(copy.deepcopy(model), layout) for layout in LAYOUTS}
    runners = {(name, layout): functools.partial(call, layouts[layout])
               for name, call in calls.items() for layout in LAYOUTS}
    with torch.no_grad():
        return interleaved(runners, rounds=rounds, warmup=1, min_sample_ms=0, min_rounds=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--configs', nargs='+', default=list(CONFIGS))
    parser.add_argument('--size', type=int, default=800)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', help='write the rows as JSON here')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from mmdet.structures import DetDataSample
    size = (args.size, args.size)
    sample = DetDataSample(metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size,
                                         batch_input_shape=size, scale_factor=(1.0, 1.0)))
    x = torch.rand(1, 3, *size)
    rows = []
    for config in args.configs:
        model = fused_detector(config)
        calls = {'extract_feat': lambda m: m.extract_feat(x),
                 'predict': lambda m: m(x, [sample.clone()], mode='predict')}
        samples = interleaved_ms(model, calls, args.repeats)
        for (name, layout), found in samples.items():
            ms = found.ms
            row = dict(config=config, call=name, layout=layout, size=args.size,
                       threads=args.threads, median_ms=statistics.median(ms), min_ms=min(ms),
                       max_ms=max(ms), repeats=len(ms), samples_ms=ms)
            if layout == 'channels_last':  # paired per round with the NCHW call
                row['ratio_to_nchw'] = compare_paired(ms, samples[(name, 'contiguous')].ms
                                                      ).as_dict()
            rows.append(row)
            print(f"{config} {name:12s} {'fast path' if layout == 'channels_last' else 'NCHW':9s} "
                  f"median {row['median_ms']:.0f} ms (min {row['min_ms']:.0f}, "
                  f"max {row['max_ms']:.0f}, n={row['repeats']})"
                  + (f", fast path / NCHW {compare_paired(ms, samples[(name, 'contiguous')].ms)}"
                     if layout == 'channels_last' else ''), flush=True)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == '__main__':
    main()
