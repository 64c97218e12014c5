"""Short real training runs on the built-in shapes data (64 px, a few iterations):
resume equivalence, EMA with RepDeployHook, the hook's logging and outputs, fused
checkpoints keeping the dataset meta, and tools/test.py refusing a mismatched checkpoint."""
import copy
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import types
import warnings

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

import mmrep  # noqa: F401
from conftest import REPO_ROOT
from fusion_check import max_rel_diff
from mmrep.datasets.shapes import CLASSES, make_shapes_dataset
from mmrep.models.backbones.repghostnet import RepGhostNet

CONFIG = osp.join(REPO_ROOT, 'configs', 'retinanet_repghost_shapes_demo.py')
SIZE = 64


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes'))
    make_shapes_dataset(root, num_train=8, num_val=4, size=SIZE)
    return root + '/'


def shapes_cfg(root: str, work_dir, max_iters: int = 2, val_interval: int = 10 ** 6,
               ckpt_interval=None, custom_hooks=None) -> Config:
    """The demo config, shrunk: 64 px, batch 2, no random flip, seeded and deterministic."""
    cfg = Config.fromfile(CONFIG)
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = osp.basename(str(work_dir))
    # the visualizer is a process-wide instance by name: one per run writes to its own log dir
    cfg.visualizer.name = f'visualizer_{cfg.experiment_name}'
    cfg.log_level = 'WARNING'
    cfg.train_dataloader.dataset.pipeline = [
        step for step in cfg.train_dataloader.dataset.pipeline if step.type != 'RandomFlip']
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg[name]
        loader.batch_size, loader.num_workers, loader.persistent_workers = 2, 0, False
        loader.dataset.data_root = root
        for step in loader.dataset.pipeline:
            if step.type == 'Resize':
                step.scale = (SIZE, SIZE)
    for name in ('val_evaluator', 'test_evaluator'):
        cfg[name].ann_file = root + 'annotations/val.json'
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=val_interval)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
                                end=max_iters)]
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False,
                                        interval=ckpt_interval or max_iters)
    cfg.default_hooks.logger.interval = 1
    cfg.randomness = dict(seed=0, deterministic=True)
    cfg.model.test_cfg.score_thr = 0.0  # short training: keep boxes so predictions compare
    if custom_hooks is not None:
        cfg.custom_hooks = custom_hooks
    return cfg


def head_outputs(model, batch):
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(copy.deepcopy(batch), False)
        return model(**data, mode='tensor')


def build_model(cfg: Config):
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    return MODELS.build(cfg.model)


def state_without_prefix(state: dict) -> dict:
    return {k[len('module.'):]: v for k, v in state.items() if k.startswith('module.')}


EMA_HOOKS = [dict(type='EMAHook', momentum=0.5),
             dict(type='RepDeployHook', validate_fused=True)]


@pytest.fixture(scope='module')
def ema_run(shapes, tmp_path_factory):
    """Two iterations with an EMAHook, validating (unfused and fused) after each."""
    work = tmp_path_factory.mktemp('ema_run')
    cfg = shapes_cfg(shapes, work, max_iters=2, val_interval=1, custom_hooks=EMA_HOOKS)
    runner = Runner.from_cfg(cfg)
    runner.train()
    return types.SimpleNamespace(cfg=cfg, runner=runner, work=str(work),
                                 ckpt=osp.join(str(work), 'iter_2.pth'),
                                 fused_ckpt=osp.join(str(work), 'iter_2_fused.pth'),
                                 fused_cfg=osp.join(str(work),
                                                    'retinanet_repghost_shapes_demo_fused.py'))


class StopAfter(Hook):
    """Interrupts training after ``iters`` iterations, once CheckpointHook has saved."""

    priority = 'LOWEST'

    def __init__(self, iters):
        self.iters = iters

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.iters:
            raise KeyboardInterrupt('simulated interruption')


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(shapes, tmp_path):
    full = Runner.from_cfg(shapes_cfg(shapes, tmp_path / 'full', max_iters=4))
    full.train()

    cfg = shapes_cfg(shapes, tmp_path / 'parts', max_iters=4, ckpt_interval=2)
    first = Runner.from_cfg(copy.deepcopy(cfg))
    first.register_hook(StopAfter(2))
    with pytest.raises(KeyboardInterrupt):
        first.train()
    interrupted = {k: v.clone() for k, v in first.model.state_dict().items()}
    assert osp.isfile(osp.join(cfg.work_dir, 'iter_2.pth'))
    cfg.resume = True  # as tools/train.py --resume: the latest checkpoint of the work dir
    resumed = Runner.from_cfg(cfg)
    resumed.train()

    assert resumed.iter == full.iter == 4
    want, got = full.model.state_dict(), resumed.model.state_dict()
    assert want.keys() == got.keys()
    assert any(not torch.equal(interrupted[k], got[k]) for k in got)  # it trained after resuming
    different = [k for k in want if not torch.equal(want[k], got[k])]
    assert not different, f'{len(different)} tensors differ, e.g. {different[:3]}'


def test_fused_metrics_are_logged_with_their_own_validation(ema_run):
    scalars = glob.glob(osp.join(ema_run.runner.log_dir, 'vis_data', 'scalars.json'))
    assert scalars, 'no scalars.json written'
    lines = [json.loads(line) for line in open(scalars[0])]
    val_lines = [line for line in lines if 'coco/bbox_mAP' in line]
    assert len(val_lines) == 2  # one per validation
    for line in val_lines:
        # the fused copy of the weights just validated: the same metric, on the same line
        assert line.get('fused/coco/bbox_mAP') == pytest.approx(line['coco/bbox_mAP'], abs=1e-3)
        assert abs(line['fused/coco/bbox_mAP_diff']) <= 1e-3


def test_ema_weights_are_fused_for_testing(ema_run):
    # from a checkpoint: mmengine's EMAHook saves the EMA weights as its state_dict
    cfg = copy.deepcopy(ema_run.cfg)
    cfg.work_dir = osp.join(ema_run.work, 'test')
    cfg.load_from = ema_run.ckpt
    tester = Runner.from_cfg(cfg)
    fused_metrics = tester.test()
    assert mmrep.count_unfused(tester.model) == 0
    ckpt = torch.load(ema_run.ckpt, map_location='cpu', weights_only=False)
    ema_model, raw_model = build_model(cfg), build_model(cfg)
    ema_model.load_state_dict(ckpt['state_dict'])
    raw_model.load_state_dict(state_without_prefix(ckpt['ema_state_dict']))
    batch = next(iter(tester.test_dataloader))
    ema_out = head_outputs(ema_model, batch)
    assert max_rel_diff(ema_out, head_outputs(tester.model, batch)) <= 1e-4
    assert max_rel_diff(ema_out, head_outputs(raw_model, batch)) > 1e-3  # EMA differs here

    cfg_unfused = copy.deepcopy(cfg)
    cfg_unfused.work_dir = osp.join(ema_run.work, 'test_unfused')
    cfg_unfused.custom_hooks = [dict(type='EMAHook', momentum=0.5)]  # tests the EMA weights
    unfused_metrics = Runner.from_cfg(cfg_unfused).test()
    for key, value in unfused_metrics.items():
        assert fused_metrics[key] == pytest.approx(value, abs=1e-3), key



def test_fused_checkpoint_keeps_dataset_meta_and_inference_names_classes(ema_run):
    from mmdet.apis import inference_detector, init_detector
    meta = torch.load(ema_run.fused_ckpt, map_location='cpu', weights_only=False)['meta']
    source = torch.load(ema_run.ckpt, map_location='cpu', weights_only=False)['meta']
    assert tuple(meta['dataset_meta']['classes']) == CLASSES
    assert meta['dataset_meta'] == source['dataset_meta']
    assert meta['mmengine_version'] == source['mmengine_version']
    assert meta['fused'] is True and meta['source_checkpoint'] == ema_run.ckpt
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = init_detector(ema_run.fused_cfg, ema_run.fused_ckpt, device='cpu')
    assert not [w for w in caught if 'dataset_meta' in str(w.message)]
    assert tuple(model.dataset_meta['classes']) == CLASSES
    assert mmrep.count_unfused(model) == 0
    image = osp.join(ema_run.cfg.val_dataloader.dataset.data_root, 'val', 'val_0000.png')
    result = inference_detector(model, image)
    names = {model.dataset_meta['classes'][int(label)] for label in result.pred_instances.labels}
    assert names and names <= set(CLASSES)


def test_reparameterize_tool_and_deploy_save_keep_dataset_meta(ema_run, tmp_path):
    from mmrep.engine.deploy_utils import load_checked, save_fused
    sys.path.insert(0, osp.join(REPO_ROOT, 'tools'))
    try:
        import reparameterize as tool
    finally:
        sys.path.pop(0)
    config = osp.join(ema_run.work, osp.basename(CONFIG))
    ema_run.cfg.dump(config)
    tool.main(types.SimpleNamespace(config=config, checkpoint=ema_run.ckpt,
                                    out_dir=str(tmp_path / 'tool'), force=False, verify=False,
                                    cfg_options=None))
    # as tools/deploy.py (mmrep.deploy.pipeline) calls save_fused: the source meta comes from
    # the checkpoint load_checked loaded
    model = build_model(ema_run.cfg)
    source = load_checked(model, ema_run.ckpt)
    save_fused(model, ema_run.cfg, str(tmp_path / 'deploy.pth'), str(tmp_path / 'deploy.py'),
               meta=dict(source_checkpoint=ema_run.ckpt), source_meta=source.get('meta') or {})
    for path in (tmp_path / 'tool' / 'iter_2_fused.pth', tmp_path / 'deploy.pth'):
        meta = torch.load(str(path), map_location='cpu', weights_only=False)['meta']
        assert tuple(meta['dataset_meta']['classes']) == CLASSES, path
        assert meta['fused'] is True and meta['source_checkpoint'] == ema_run.ckpt


def test_tools_test_refuses_a_fused_checkpoint_with_the_training_config(ema_run, shapes):
    done = subprocess.run(
        [sys.executable, osp.join(REPO_ROOT, 'tools', 'test.py'), CONFIG, ema_run.fused_ckpt,
         '--work-dir', osp.join(ema_run.work, 'tool_test'),
         '--cfg-options', f'test_dataloader.dataset.data_root={shapes}',
         f'test_evaluator.ann_file={shapes}annotations/val.json'],
        capture_output=True, text=True, cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert done.returncode != 0
    assert 'already fused' in done.stderr, done.stderr[-2000:]


def test_stale_last_checkpoint_of_an_earlier_run_is_not_trusted(ema_run, shapes, tmp_path):
    old = tmp_path / 'iter_9.pth'  # an earlier run in the same work dir left these
    old.write_bytes(open(ema_run.ckpt, 'rb').read())
    (tmp_path / 'last_checkpoint').write_text(str(old))
    cfg = shapes_cfg(shapes, tmp_path, max_iters=1, ckpt_interval=100)
    cfg.default_hooks.checkpoint.save_last = False  # this run saves no checkpoint
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert not (tmp_path / 'iter_9_fused.pth').exists()
    assert not glob.glob(str(tmp_path / '*_fused.*'))
    fused = osp.join(runner.log_dir, 'iter_1_fused.pth')  # this run's weights, in its own dir
    meta = torch.load(fused, map_location='cpu', weights_only=False)['meta']
    assert meta['source_checkpoint'] is None and meta['iter'] == 1
    assert tuple(meta['dataset_meta']['classes']) == CLASSES
    model = build_model(Config.fromfile(osp.join(runner.log_dir,
                                                 'retinanet_repghost_shapes_demo_fused.py')))
    from mmrep.engine.deploy_utils import load_checked
    load_checked(model, fused)  # the fused config builds the model the checkpoint holds


def test_hook_finishes_a_runner_built_from_a_model_object(shapes, tmp_path):
    cfg = shapes_cfg(shapes, tmp_path, max_iters=1)
    runner = Runner(model=build_model(cfg), work_dir=str(tmp_path), experiment_name='direct',
                    train_dataloader=cfg.train_dataloader, optim_wrapper=cfg.optim_wrapper,
                    train_cfg=cfg.train_cfg, default_hooks=cfg.default_hooks,
                    custom_hooks=[dict(type='RepDeployHook')], default_scope='mmdet',
                    log_level='WARNING')
    runner.train()  # no config to write: a warning, no crash
    assert runner.iter == 1
    assert not glob.glob(str(tmp_path / '**' / '*_fused.*'), recursive=True)


def test_hook_resolves_a_scoped_type(shapes, tmp_path):
    cfg = shapes_cfg(shapes, tmp_path, max_iters=1)
    cfg.model.backbone.type = 'mmdet.RepGhostNet'
    runner = Runner.from_cfg(cfg)
    runner.train()
    fused_ckpt = tmp_path / 'iter_1_fused.pth'
    fused = Config.fromfile(str(tmp_path / 'retinanet_repghost_shapes_demo_fused.py'))
    assert fused.model.backbone.deploy is True
    from mmrep.engine.deploy_utils import load_checked
    load_checked(build_model(fused), str(fused_ckpt))


def test_class_types_of_pure_python_configs_are_fused_and_written(shapes, tmp_path):
    # (mmengine's Runner prints a non-lazy config with class types only in pure-Python configs,
    # so the hook's save path is called directly here)
    from mmrep.engine.deploy_utils import load_checked, save_fused
    cfg = shapes_cfg(shapes, tmp_path)
    model = build_model(cfg)
    cfg.model.backbone.type = RepGhostNet
    save_fused(model.eval(), cfg, str(tmp_path / 'f.pth'), str(tmp_path / 'f.py'))
    fused = Config.fromfile(str(tmp_path / 'f.py'))
    assert fused.model.backbone.type == 'mmdet.RepGhostNet' and fused.model.backbone.deploy
    load_checked(build_model(fused), str(tmp_path / 'f.pth'))


def test_nothing_is_written_when_the_config_cannot_be_fused(shapes, tmp_path):
    from mmrep.engine.deploy_utils import save_fused
    cfg = shapes_cfg(shapes, tmp_path)
    model = build_model(cfg)
    cfg.model.backbone.type = 'mmdet.ResNet'  # no mmrep model left to fuse
    with pytest.raises(ValueError, match='no mmrep backbone or neck'):
        save_fused(model, cfg, str(tmp_path / 'f.pth'), str(tmp_path / 'f.py'))
    assert sorted(os.listdir(tmp_path)) == []
