"""Convert a whole detector / segmentor checkpoint of mmdet 2.x / mmseg 0.x for an mmrep config.

    python tools/convert_whole_model.py SRC OUT CONFIG [--from official] [--force]

For the official RepViT COCO and ADE20K checkpoints (THU-MIG/RepViT, mmdet 2.28 /
mmseg 0.30), e.g.::

    python tools/convert_whole_model.py repvit_m1_1_coco.pth repvit_m1_1_coco_mmdet3.pth \\
        configs/mask-rcnn_repvit-m1.1_fpn_1x_coco.py
    python tools/test.py configs/mask-rcnn_repvit-m1.1_fpn_1x_coco.py repvit_m1_1_coco_mmdet3.pth

The backbone keys are renamed by the backbone's converter family, the neck and
head keys are kept; OUT loads strictly into CONFIG's model (checked before it is written).
"""
import argparse
import sys

import mmrep  # noqa: F401
from mmrep.converters import ConversionError
from mmrep.converters.whole_model import convert_whole_model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a whole mmdet 2.x / mmseg 0.x checkpoint for an mmrep config')
    parser.add_argument('src', help='the checkpoint to convert (mmdet 2.x / mmseg 0.x)')
    parser.add_argument('out', help='where to write the converted checkpoint')
    parser.add_argument('config', help='the mmrep config whose model OUT is for')
    parser.add_argument('--from', dest='source', default='official',
                        help="the layout of SRC's backbone (default: official)")
    parser.add_argument('--force', action='store_true', help='overwrite OUT if it exists')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='unpickle SRC fully (needed when it stores Python objects '
                             'besides tensors); only for files you trust')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = convert_whole_model(args.src, args.out, args.config, source=args.source,
                                     force=args.force, unsafe=args.unsafe_load)
    except (ConversionError, FileExistsError, FileNotFoundError) as error:
        print(f'convert_whole_model: {error}', file=sys.stderr)
        return 1
    print(f'wrote {args.out}: renamed {report["renamed"]} backbone tensors '
          f'({report["arch"]}), kept {report["kept"]}; test it with\n'
          f'  python tools/test.py {args.config} {args.out}\n'
          f'or fine-tune from it with load_from={args.out!r}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
