"""Evaluate a checkpoint; with RepDeployHook in the config the fused network is tested."""
import argparse
import os
import os.path as osp

import mmrep  # noqa: F401  registers mmrep models/hooks and the 'mmrep::' config scope
from mmengine.config import Config, DictAction
from mmengine.runner import Runner


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation results')
    parser.add_argument('--out', help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument('--no-fuse', action='store_true',
                        help='test the unfused network (drop RepDeployHook)')
    parser.add_argument('--memory-format', default='auto',
                        choices=('auto', 'channels_last', 'contiguous'),
                        help='layout of the fused model (auto: mmrep.engine.fast_path)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    if args.no_fuse:
        cfg.custom_hooks = [h for h in cfg.get('custom_hooks', []) if h['type'] != 'RepDeployHook']
    for hook in cfg.get('custom_hooks', []):  # fast path: mmrep.engine.fast_path
        if hook['type'] == 'RepDeployHook':
            hook['memory_format'] = args.memory_format
    if args.out is not None:
        cfg.test_evaluator = [cfg.test_evaluator] if isinstance(cfg.test_evaluator, dict) \
            else list(cfg.test_evaluator)
        cfg.test_evaluator.append(dict(type='DumpResults', out_file_path=args.out))
    runner = Runner.from_cfg(cfg)
    runner.test()


if __name__ == '__main__':
    main()
