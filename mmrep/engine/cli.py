"""What tools/train.py and tools/test.py share: mmdet's command-line flags and the config they make."""
from __future__ import annotations

import argparse
import ast
import copy
import os
import os.path as osp
from typing import Optional, Sequence

from mmengine.config import Config, DictAction


def literal_dict(text: str) -> dict:
    """``"dict(type='Pretrained', checkpoint='a.pth')"`` -> the dict; literals only, nothing runs.

    Keyword values may be quoted strings, numbers, booleans, None, lists,
    tuples and nested ``dict(...)`` calls. Raises ValueError saying what is wrong.
    """
    try:
        node = ast.parse(text.strip(), mode='eval').body
    except SyntaxError as error:
        raise ValueError(f'not a Python expression ({error.msg})') from None

    def value(node):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == 'dict':
            if node.args or any(kw.arg is None for kw in node.keywords):
                raise ValueError('dict(...) takes keyword arguments only (key=value)')
            return {kw.arg: value(kw.value) for kw in node.keywords}
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        try:
            return ast.literal_eval(node)
        except ValueError:
            hint = f" (quote strings: '{node.id}')" if isinstance(node, ast.Name) else ''
            raise ValueError(f'{ast.unparse(node)} is not a literal{hint}') from None

    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == 'dict'):
        raise ValueError('expected dict(key=value, ...)')
    return value(node)


class ConfigOptionsAction(DictAction):
    """mmengine's ``--cfg-options`` parser, which also reads ``KEY=dict(...)`` values.

    mmengine 0.10.7's ``DictAction`` parses lists and tuples, and recurses
    until ``RecursionError`` on a ``dict(...)`` value, e.g. the
    ``model.backbone.init_cfg=dict(type='Pretrained', checkpoint=PATH)`` a
    user copies from a config. Here such a value is read with
    :func:`literal_dict`; every other value as mmengine reads it. (Stock
    mmdet/mmseg tools keep mmengine's parser; there the same override is
    written with dotted keys: ``model.backbone.init_cfg.type=Pretrained
    model.backbone.init_cfg.checkpoint=PATH``.)
    """

    def __call__(self, parser, namespace, values, option_string=None):
        options = copy.copy(getattr(namespace, self.dest, None) or {})
        for option in values or []:
            key, equals, text = option.partition('=')
            if not equals:
                parser.error(f'{option_string} {option!r}: expected KEY=VALUE')
            if text.strip().startswith('dict('):
                try:
                    options[key] = literal_dict(text)
                except ValueError as error:
                    parser.error(
                        f'{option_string} {option!r}: {error}. Write the value as a Python '
                        "literal, e.g. KEY=\"dict(type='Pretrained', checkpoint='a.pth')\", "
                        'or set each entry with a dotted key, e.g. KEY.type=Pretrained '
                        'KEY.checkpoint=a.pth')
            else:
                options[key] = self._parse_iterable(text)
        setattr(namespace, self.dest, options)


def make_parser(description: str, config_help: str) -> argparse.ArgumentParser:
    """A parser with the flags every mmdet tool takes: config, --work-dir, --cfg-options, --launcher."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('config', help=config_help)
    parser.add_argument('--work-dir', help='the dir to save logs, models and results')
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptionsAction,
                        help='override settings in the config, key=value '
                             '(e.g. train_dataloader.batch_size=2, or '
                             "model.backbone.init_cfg=\"dict(type='Pretrained', checkpoint='a.pth')\")")
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def parse_args(parser: argparse.ArgumentParser,
               argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(args: argparse.Namespace) -> Config:
    """The config with the launcher, ``--cfg-options`` and the work dir applied.

    The work dir is ``--work-dir``, else the config's, else ``./work_dirs/<config name>``.
    """
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg
