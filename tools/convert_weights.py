"""Convert a pretrained checkpoint of the official repo, timm or mmpretrain into an mmrep backbone checkpoint.

    python tools/convert_weights.py SRC OUT --from {official,timm,mmpretrain} --arch ARCH [--ema] [--force]

ARCH (case-insensitive): repvgg-a0 ... repvgg-b3g4, repvgg-d2se;
repghostnet-0.5x, -0.58x, -0.8x, -1.0x, -1.11x, -1.3x, -1.5x, -2.0x;
orepa-resnet18/34/50/101; replknet-31b, -31l, -xl; mobileone-s0 ... -s4;
repvit-m0.9, -m1.0, -m1.1, -m1.5, -m2.3, -m1, -m2, -m3.
Load OUT with ``init_cfg=dict(type='Pretrained', checkpoint=OUT)`` in the
backbone config printed at the end (``deploy=True`` for a deploy-form SRC).
"""
import argparse
import sys

import mmrep  # noqa: F401
from mmrep.checkpoint import NotACheckpointError, UntrustedCheckpointError
from mmrep.converters import ConversionError, convert_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a pretrained checkpoint (official repo, timm, mmpretrain) '
                    'for an mmrep backbone')
    parser.add_argument('src', help='the checkpoint to convert')
    parser.add_argument('out', help='where to write the mmrep checkpoint')
    parser.add_argument('--from', dest='source', required=True,
                        choices=('official', 'timm', 'mmpretrain'),
                        help='the layout of SRC')
    parser.add_argument('--arch', required=True,
                        help='e.g. repvgg-a0, repvgg-b1g4, repghostnet-1.0x, orepa-resnet50, '
                             'replknet-31b, mobileone-s0, repvit-m1.1')
    parser.add_argument('--ema', action='store_true',
                        help='convert the EMA weights of SRC (timm: state_dict_ema; official '
                             "RepVGG: ema; mmengine EMAHook: state_dict) instead of the raw ones")
    parser.add_argument('--force', action='store_true', help='overwrite OUT if it exists')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='unpickle SRC fully (needed when it stores Python objects other '
                             'than tensors, numpy values and mmengine/timm training state); '
                             'only for files you trust')
    return parser.parse_args(argv)


def config_text(value) -> str:
    """A dict as config code: ``dict(type='RepVGG', init_cfg=dict(...))``."""
    if isinstance(value, dict):
        return 'dict(' + ', '.join(f'{k}={config_text(v)}' for k, v in value.items()) + ')'
    return repr(value)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = convert_checkpoint(args.src, args.out, args.source, args.arch, ema=args.ema,
                                    force=args.force, unsafe=args.unsafe_load)
    except UntrustedCheckpointError as error:
        print(f'convert_weights: {error} With this tool: pass --unsafe-load.', file=sys.stderr)
        return 1
    except (ConversionError, NotACheckpointError, FileExistsError, FileNotFoundError) as error:
        print(f'convert_weights: {error}', file=sys.stderr)
        return 1
    print(f'wrote {args.out}; use it as\n  backbone={config_text(report["backbone"])}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
