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
    parser.add_argument('config', help=f'{config_help} (a path, or mmrep::configs/<name>.py)')
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


def config_path(name: str) -> str:
    """A config argument as a file: a path, or ``package::path`` inside an installed package.

    ``mmrep::configs/retinanet_repvgg-a0_1x.py``,
    ``mmrep::configs/deploy/detection_onnxruntime_static.py`` and
    ``mmdet::retinanet/retinanet_r50_fpn_1x_coco.py`` resolve as mmengine
    resolves such names in ``_base_``, so every tool takes the names a config
    file may inherit from. An existing file of that name wins.
    """
    if osp.isfile(name):
        return name
    if '::' not in name:
        raise FileNotFoundError(f'config file {name} does not exist')
    import mmrep.config_scope  # noqa: F401  (mmengine's table then knows the mmrep:: scope)
    package = name.partition('::')[0]
    if not package:
        raise FileNotFoundError(f'config {name}: no package before "::" (e.g. '
                                'mmrep::configs/deploy/detection_onnxruntime_static.py)')
    try:
        path, _ = Config._get_cfg_path(name, '')
    except FileNotFoundError as exc:
        raise FileNotFoundError(f'config {name}: {exc} (names are {package}::<path inside the '
                                f"package's configs>, e.g. mmrep::configs/deploy/"
                                'detection_onnxruntime_static.py)') from exc
    except ValueError as exc:  # mmengine: no package name
        raise FileNotFoundError(f'config {name}: {exc}') from exc
    return path


def load_config(args: argparse.Namespace) -> Config:
    """The config with the launcher, ``--cfg-options`` and the work dir applied.

    The work dir is ``--work-dir``, else the config's, else ``./work_dirs/<config name>``.
    """
    args.config = config_path(args.config)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg
