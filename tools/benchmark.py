"""Time mmrep's models (or your own detector) on every CPU inference path: median latency,
its spread, peak memory, and paired ratios that say when a difference is noise.

Examples:
  python tools/benchmark.py --models RepVGG-A0 RepLKNet-31B
  python tools/benchmark.py --config my_retinanet.py --checkpoint epoch_12.pth
  python tools/benchmark.py --models RepVGG-A0 --paths fused onnxruntime openvino --threads 2

Each model is timed with its peers (timm twins, stock references) in one
group: all paths interleaved round by round, so any two rows of a group give
paired time ratios with a 95% interval. Writes DIR/benchmark.json (rows with
per-round samples, and a record of each run: command, versions, threads, load),
DIR/benchmark.md (tables and paired ratios) and DIR/benchmark.png.
See docs/en/user_guides/benchmark.md.
"""
from __future__ import annotations

import argparse
import os.path as osp
import shlex
import sys
from typing import List, Optional, Sequence

class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, unless it has none or the help says it already."""

    def _get_help_string(self, action):
        text = action.help or ''
        if (action.default in (None, False, argparse.SUPPRESS) or 'default' in text
                or not action.option_strings):
            return text
        default = action.default
        if isinstance(default, (list, tuple)):
            default = ' '.join(map(str, default))
        return f'{text} (default: {default})'


def parse_args(argv: Optional[Sequence[str]] = None):
    from mmengine.config import DictAction

    from mmrep.benchmark import models, run, runtimes, timing
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=_HelpFormatter)
    parser.add_argument('--models', nargs='+', metavar='NAME', default=None,
                        help='built-in models to time (default: all, or none with --config): '
                        + ', '.join(models.MODEL_SPECS))
    parser.add_argument('--config', help='time this detector or segmentor config (a file or '
                        "'mmrep::configs/<name>.py'), fused and unfused, on every path")
    parser.add_argument('--checkpoint', help="--config's weights (unfused or fused)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override settings of --config')
    parser.add_argument('--paths', nargs='+', default=list(runtimes.ALL_PATHS),
                        choices=runtimes.ALL_PATHS, metavar='PATH',
                        help='inference paths (default: all): ' + ', '.join(runtimes.ALL_PATHS))
    parser.add_argument('--batch', nargs='+', type=int, default=[1], help='batch sizes')
    parser.add_argument('--size', nargs=2, type=int, default=(224, 224), metavar=('H', 'W'),
                        help='input of backbones (a neck gets their feature maps of it)')
    parser.add_argument('--input-size', nargs=2, type=int, metavar=('H', 'W'),
                        help="input of whole models (default: their config's test pipeline "
                        'applied to --image-size)')
    parser.add_argument('--image-size', nargs=2, type=int, metavar=('H', 'W'),
                        help="the image the test pipeline resizes (default: the config's first "
                        'test image if on disk, else its data set\'s size, else 480x640)')
    parser.add_argument('--threads', type=int, default=run.DEFAULT_THREADS,
                        help='threads of every runtime (torch, onnxruntime, OpenVINO)')
    parser.add_argument('--rounds', type=int, default=timing.DEFAULT_ROUNDS,
                        help='interleaved rounds: samples per row')
    parser.add_argument('--max-seconds', type=float, default=120.0,
                        help=f'fewer rounds (at least {timing.MIN_ROUNDS}) when a group would '
                        'take longer')
    parser.add_argument('--min-sample-ms', type=float, default=timing.DEFAULT_MIN_SAMPLE_MS,
                        help='a sample repeats fast calls to last at least this long')
    parser.add_argument('--no-memory', action='store_true',
                        help='skip peak memory (one fresh process per row)')
    parser.add_argument('--no-peers', action='store_true',
                        help='skip the timm twins and stock models timed beside a model')
    parser.add_argument('--out', default=osp.join('work_dirs', 'benchmark'),
                        help='output directory')
    parser.add_argument('--append', action='store_true',
                        help='add to OUT/benchmark.json: rows of the same model, path, batch, '
                        'input and threads are replaced')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an existing OUT/benchmark.json (refused otherwise)')
    args = parser.parse_args(argv)
    if args.append and args.overwrite:
        parser.error('--append and --overwrite exclude each other')
    if args.checkpoint and not args.config:
        parser.error('--checkpoint needs --config')
    if args.cfg_options and not args.config:
        parser.error('--cfg-options needs --config')
    if args.models is None:
        args.models = [] if args.config else models.default_model_names()
    unknown = [m for m in args.models if m not in models.MODEL_SPECS]
    if unknown:
        parser.error(f'unknown model(s) {unknown}; choose from: '
                     + ', '.join(models.MODEL_SPECS))
    if not args.models and not args.config:
        parser.error('nothing to time: give --models and/or --config')
    for name in ('threads', 'rounds'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    return args


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args = parse_args(argv)
    from mmrep.benchmark import models, run
    specs = dict(models.MODEL_SPECS)
    to_run = [specs[name] for name in args.models]
    if args.config:
        try:
            user = models.spec_from_config(args.config, args.checkpoint, args.cfg_options)
        except (FileNotFoundError, ValueError) as error:
            sys.exit(f'error: {error}')
        specs[user.name] = user
        to_run.append(user)
    options = run.Options(paths=args.paths, batches=args.batch, size=tuple(args.size),
                          input_size=args.input_size, image_size=args.image_size,
                          threads=args.threads, rounds=args.rounds,
                          max_seconds=args.max_seconds, min_sample_ms=args.min_sample_ms,
                          memory=not args.no_memory, peers=not args.no_peers)
    command = shlex.join(['python', 'tools/benchmark.py'] + list(sys.argv[1:] if argv is None
                                                                  else argv))
    from mmrep.engine.deploy_utils import CheckpointMismatchError
    try:
        files = run.RunFiles(args.out, command, args.append, args.overwrite)
        # saved after each model, marked running until the run's record replaces it
        rows, record = run.run(to_run, options, specs, on_group=lambda rows: files.save(
            rows, dict(status='running')))
    except (run.OutputError, CheckpointMismatchError, FileNotFoundError) as error:
        sys.exit(f'error: {error}')
    rows = files.finish(rows, record)
    for warning in record['warnings']:
        print(f'WARNING: {warning}')
    print(f'wrote benchmark.json, benchmark.md and benchmark.png in {args.out}')
    return rows


if __name__ == '__main__':
    main()
