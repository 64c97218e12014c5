"""The fast path on two-stage detectors: NCHW for the whole model vs channels_last with mmcv's ops in NCHW.

    python benchmarks/two_stage_fast_path.py [--configs C ...] [--size 800] [--repeats 7]
        [--threads 1] [--out FILE]

mmcv's compiled ops (RoIAlign, deformable convs) read NCHW memory, so the fast
path (:mod:`mmrep.engine.fast_path`) keeps them NCHW and runs the rest of the
model channels_last. The alternative would be NCHW for every model that holds
such an op. This measures both on the shipped Mask R-CNN configs, fused, with
random weights (speed does not depend on them): ``extract_feat`` (backbone and
neck) and a whole ``predict`` on one ``size x size`` image. The layouts are
interleaved, one call each per round after a warm-up, and the median, min and
max of ``--repeats`` rounds are printed. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import statistics
import time

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmrep
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


def interleaved_ms(model, calls: dict, repeats: int) -> dict:
    """``{(call, layout): [ms, ...]}``, one call per layout per round, after a warm-up round."""
    times = {(name, layout): [] for name in calls for layout in LAYOUTS}
    with torch.no_grad():
        for round_ in range(repeats + 1):
            for name, call in calls.items():
                for layout in LAYOUTS:
                    apply_memory_format(model, layout)
                    start = time.perf_counter()
                    call()
                    if round_:  # round 0 warms up
                        times[(name, layout)].append((time.perf_counter() - start) * 1000)
    return times


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
        calls = {'extract_feat': lambda: model.extract_feat(x),
                 'predict': lambda: model(x, [sample.clone()], mode='predict')}
        for (name, layout), ms in interleaved_ms(model, calls, args.repeats).items():
            row = dict(config=config, call=name, layout=layout, size=args.size,
                       threads=args.threads, median_ms=statistics.median(ms), min_ms=min(ms),
                       max_ms=max(ms), repeats=len(ms))
            rows.append(row)
            print(f"{config} {name:12s} {'fast path' if layout == 'channels_last' else 'NCHW':9s} "
                  f"median {row['median_ms']:.0f} ms (min {row['min_ms']:.0f}, "
                  f"max {row['max_ms']:.0f}, n={row['repeats']})", flush=True)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == '__main__':
    main()
