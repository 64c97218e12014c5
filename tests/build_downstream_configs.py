"""Build every component of downstream configs as mmdet's / mmseg's tools/train.py and test.py do.

Run by tests/test_stock_tools.py in a user's project folder, in a fresh
process: ``python build_downstream_configs.py OUT.json CONFIG [CONFIG ...]``.
For each config, mmengine's ``Runner.from_cfg`` builds the model, hooks,
visualizer and log processor (as the stock tools do), then the runner's own
methods build what ``train()`` and ``test()`` build: the train, val and test
loops with their data loaders, data sets, transforms, samplers, evaluators and
metrics, the optimizer wrapper and the parameter schedulers. One sample of
each data set goes through its pipeline. ``model.init_weights()`` runs as in
``train()`` where the backbone's ``init_cfg`` names a checkpoint file of the project.

For every built object whose config names a ``type``, the JSON records the
class built and the class the config's default scope (the host: ``mmdet`` or
``mmseg``) registers under that name, so that the test can tell an object
built from the right host from one that a lookup elsewhere found.
"""
import json
import os.path as osp
import sys
from importlib import import_module

import torch
from mmengine.config import Config
from mmengine.runner import Runner


def qualname(cls) -> str:
    return f'{cls.__module__}.{cls.__qualname__}'


def host_class(scope: str, registry: str, name: str):
    """The class that the host's registry (``mmdet.registry.TRANSFORMS``, ...) gives for ``name``."""
    found = getattr(import_module(f'{scope}.registry'), registry).get(name)
    return qualname(found) if found is not None else None


def record(built, cfg, registry: str, scope: str, out: list, outer_scope=None) -> None:
    """``scope``: the host; the recorded ``scope`` is the one the object was built in:
    its ``_scope_``, else that of the dict it is nested in (``outer_scope``)."""
    name = cfg['type'] if isinstance(cfg['type'], str) else cfg['type'].__name__
    out.append(dict(registry=registry, type=name, built=qualname(type(built)),
                    host=host_class(scope, registry, name),
                    scope=cfg.get('_scope_') or outer_scope))


def record_dataset(dataset, cfg, scope: str, out: list, outer_scope=None) -> None:
    record(dataset, cfg, 'DATASETS', scope, out, outer_scope)
    outer_scope = cfg.get('_scope_') or outer_scope  # the scope its transforms are built in
    # a Compose; a wrapper (MultiImageMixDataset) keeps a list
    transforms = getattr(dataset.pipeline, 'transforms', dataset.pipeline)
    for transform, transform_cfg in zip(transforms, cfg.get('pipeline', [])):
        record(transform, transform_cfg, 'TRANSFORMS', scope, out, outer_scope)
    if 'dataset' in cfg:  # a wrapper: MultiImageMixDataset, ConcatDataset, ...
        record_dataset(dataset.dataset, cfg['dataset'], scope, out, outer_scope)


def build(config: str, index: int) -> dict:
    cfg = Config.fromfile(config)
    scope = cfg.default_scope
    cfg.work_dir = f'work_dirs/build_{index}'
    cfg.visualizer.name = f'visualizer_{index}'  # one global instance per name
    for split in ('train', 'val', 'test'):
        loader = cfg[f'{split}_dataloader']
        loader.num_workers, loader.persistent_workers = 0, False
    runner = Runner.from_cfg(cfg)
    out = []
    for hook_cfg in cfg.custom_hooks:
        (hook,) = [h for h in runner.hooks if type(h).__name__ == hook_cfg['type']]
        record(hook, hook_cfg, 'HOOKS', scope, out)
    record(runner.visualizer, cfg.visualizer, 'VISUALIZERS', scope, out)

    loops = dict(train=runner.build_train_loop(cfg.train_cfg),
                 val=runner.build_val_loop(cfg.val_cfg),
                 test=runner.build_test_loop(cfg.test_cfg))
    samples = {}
    for split, loop in loops.items():
        loader_cfg = cfg[f'{split}_dataloader']
        record_dataset(loop.dataloader.dataset, loader_cfg.dataset, scope, out)
        # torch keeps the configured sampler in the batch sampler (a plain BatchSampler if none)
        record(loop.dataloader.batch_sampler.sampler, loader_cfg.sampler, 'DATA_SAMPLERS',
               scope, out)
        if loader_cfg.get('batch_sampler'):
            record(loop.dataloader.batch_sampler, loader_cfg.batch_sampler, 'DATA_SAMPLERS',
                   scope, out)
        samples[split] = sorted(loop.dataloader.dataset[0])  # the pipeline runs
        if split != 'train':
            metric_cfgs = cfg[f'{split}_evaluator']
            metric_cfgs = metric_cfgs if isinstance(metric_cfgs, list) else [metric_cfgs]
            for metric, metric_cfg in zip(loop.evaluator.metrics, metric_cfgs):
                record(metric, metric_cfg, 'METRICS', scope, out)
    runner.optim_wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
    if 'type' in cfg.optim_wrapper:
        record(runner.optim_wrapper, cfg.optim_wrapper, 'OPTIM_WRAPPERS', scope, out)
    scheduler_cfgs = cfg.param_scheduler
    scheduler_cfgs = scheduler_cfgs if isinstance(scheduler_cfgs, list) else [scheduler_cfgs]
    for scheduler, scheduler_cfg in zip(runner.build_param_scheduler(scheduler_cfgs),
                                        scheduler_cfgs):
        record(scheduler, scheduler_cfg, 'PARAM_SCHEDULERS', scope, out)

    init_cfg = cfg.model.backbone.get('init_cfg')
    pretrained_max_diff = None
    # only weights the project holds: a config may name weights on a hub (no network here)
    if init_cfg and init_cfg.get('type') == 'Pretrained' and osp.isfile(init_cfg['checkpoint']):
        runner.model.init_weights()  # as Runner.train() does
        loaded = torch.load(init_cfg['checkpoint'], map_location='cpu')['state_dict']
        now = runner.model.backbone.state_dict()
        assert set(loaded) <= set(now), sorted(set(loaded) - set(now))[:5]
        pretrained_max_diff = max(float((now[k].double() - v.double()).abs().max())
                                  for k, v in loaded.items() if v.is_floating_point())
    train_dataset = loops['train'].dataloader.dataset
    return dict(config=config, scope=scope, components=out, samples=samples,
                model=type(runner.model).__name__, backbone=cfg.model.backbone.type,
                init_cfg=init_cfg.to_dict() if hasattr(init_cfg, 'to_dict') else init_cfg,
                pretrained_max_diff=pretrained_max_diff,
                classes=list(train_dataset.metainfo['classes']),
                mmrep=sys.modules['mmrep'].__file__)


def main():
    out_file, configs = sys.argv[1], sys.argv[2:]
    results = [build(config, i) for i, config in enumerate(configs)]
    with open(out_file, 'w') as f:
        json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
