"""Train a detector or segmentor with mmrep's models (mmdet's tools/train.py flags)."""
import mmrep  # noqa: F401  registers mmrep models/hooks and the 'mmrep::' config scope
from mmengine.config import Config
from mmengine.runner import Runner

from mmrep.engine import cli
from mmrep.hub import WeightsUnavailableError
from mmrep.models.pretrained import PretrainedMismatchError
from mmrep.pretrained_init import prepare_pretrained


def parse_args(argv=None):
    parser = cli.make_parser('Train a model', 'train config file path')
    parser.add_argument('--amp', action='store_true', help='enable automatic-mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true', help='scale the lr by the batch size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or from the latest in work_dir if none given')
    return cli.parse_args(parser, argv)


def build_config(args) -> Config:
    cfg = cli.load_config(args)
    if args.amp:
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print('AMP training is already enabled in the config')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise RuntimeError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def init_cpu_process_group(cfg: Config) -> None:
    """mmengine 0.10.7's pytorch launcher calls torch.cuda.set_device, which fails
    without a GPU: on CPU, join the torchrun process group with gloo here first."""
    import torch
    import torch.distributed as dist
    if cfg.launcher == 'pytorch' and not torch.cuda.is_available() and not dist.is_initialized():
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
        if cfg.get('model_wrapper_cfg') is None:
            cfg.model_wrapper_cfg = dict(type='CPUDistributedDataParallel', broadcast_buffers=False,
                                         find_unused_parameters=cfg.get('find_unused_parameters', False))
        dist.init_process_group(backend='gloo')


def main():
    args = parse_args()
    cfg = build_config(args)
    init_cpu_process_group(cfg)
    try:
        runner = Runner.from_cfg(cfg)
        # Pretrained weights named in init_cfg: downloaded and converted now, so that an
        # unreachable hub stops the run before the data sets are loaded
        prepare_pretrained(runner.model)
    except (WeightsUnavailableError, PretrainedMismatchError) as error:
        raise SystemExit(f'train.py: {type(error).__name__}: {error}') from None
    runner.train()


if __name__ == '__main__':
    main()
