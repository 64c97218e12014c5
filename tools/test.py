"""Evaluate a checkpoint; with RepDeployHook in the config the fused network is tested."""
import mmrep  # noqa: F401  registers mmrep models/hooks and the 'mmrep::' config scope
from mmengine.config import Config
from mmengine.runner import Runner

from mmrep.checkpoint import NotACheckpointError, UntrustedCheckpointError
from mmrep.engine import cli
from mmrep.engine.deploy_utils import CheckpointMismatchError, load_checked
from mmrep.engine.rep_deploy_hook import is_rep_deploy_hook


def parse_args(argv=None):
    parser = cli.make_parser('Test (and evaluate) a model', 'test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument('--no-fuse', action='store_true',
                        help='test the unfused network (drop RepDeployHook)')
    parser.add_argument('--memory-format', default='auto',
                        choices=('auto', 'channels_last', 'contiguous'),
                        help='layout of the fused model (auto: mmrep.engine.fast_path)')
    return cli.parse_args(parser, argv)


def build_config(args) -> Config:
    cfg = cli.load_config(args)
    cfg.load_from = args.checkpoint
    hooks = list(cfg.get('custom_hooks') or [])
    if args.no_fuse:  # however the config spells the hook's type
        hooks = [h for h in hooks if not is_rep_deploy_hook(h)]
    for hook in hooks:  # fast path: mmrep.engine.fast_path
        if is_rep_deploy_hook(hook):
            hook['memory_format'] = args.memory_format
    cfg.custom_hooks = hooks
    if args.out is not None:
        cfg.test_evaluator = [cfg.test_evaluator] if isinstance(cfg.test_evaluator, dict) \
            else list(cfg.test_evaluator)
        cfg.test_evaluator.append(dict(type='DumpResults', out_file_path=args.out))
    return cfg


def main():
    args = parse_args()
    cfg = build_config(args)
    runner = Runner.from_cfg(cfg)
    # mmengine loads load_from non-strictly (a warning, then the wrong weights): check first
    try:
        load_checked(runner.model, args.checkpoint)
    except (CheckpointMismatchError, NotACheckpointError, UntrustedCheckpointError) as err:
        raise SystemExit(f'tools/test.py: {err}')
    runner.test()


if __name__ == '__main__':
    main()
