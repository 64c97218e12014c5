"""What tools/train.py and tools/test.py share: mmdet's command-line flags and the config they make."""
from __future__ import annotations

import argparse
import os
import os.path as osp
from typing import Optional, Sequence

from mmengine.config import Config, DictAction


def make_parser(description: str, config_help: str) -> argparse.ArgumentParser:
    """A parser with the flags every mmdet tool takes: config, --work-dir, --cfg-options, --launcher."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('config', help=config_help)
    parser.add_argument('--work-dir', help='the dir to save logs, models and results')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value '
                             '(e.g. train_dataloader.batch_size=2)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def parse_args(parser: argparse.ArgumentParser,
               argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def read_config(path: str) -> Config:
    """``Config.fromfile``, failing with the mmrep extra to install when the config needs
    mmdet or mmseg (a ``mmseg::`` base, ``default_scope='mmseg'``) and it is missing."""
    from mmrep.registry import CODEBASES, require_codebase
    try:
        cfg = Config.fromfile(path)
    except ModuleNotFoundError as error:  # mmengine: '<package> is not installed, ...'
        for scope, (distribution, _) in CODEBASES.items():
            if str(error).startswith(f'{distribution} is not installed'):
                require_codebase(scope, f'{path} (a {scope}:: base)')
        raise
    require_codebase(cfg.get('default_scope'), f'{path} (default_scope={cfg.get("default_scope")!r})')
    return cfg


def load_config(args: argparse.Namespace) -> Config:
    """The config with the launcher, ``--cfg-options`` and the work dir applied.

    The work dir is ``--work-dir``, else the config's, else ``./work_dirs/<config name>``.
    """
    cfg = read_config(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg
