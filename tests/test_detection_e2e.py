"""RetinaNet-RepGhost through the real mmdet pipeline on coco128: train, test fused, export, resume."""
import copy
import os
import os.path as osp
import subprocess
import sys
import types

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

import mmrep
from conftest import REPO_ROOT, shared_data
from fusion_check import count_bn, max_rel_diff
from mmrep.engine.deploy_utils import CheckpointMismatchError, load_checked

CONFIG = osp.join(REPO_ROOT, 'configs', 'retinanet_repghost_1x.py')
SCALE = (320, 256)


def coco128_cfg(tmp_path, config=CONFIG, max_iters=1, num_images=4) -> Config:
    root = shared_data('coco128') + '/'
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None  # offline: the config names ImageNet weights on the hub
    cfg.work_dir = str(tmp_path)
    cfg.experiment_name = f'test_{osp.basename(str(tmp_path))}'
    for stage in ('train', 'test'):
        pipeline = cfg[f'{stage}_dataloader'].dataset.pipeline
        for step in pipeline:
            if step['type'] == 'Resize':
                step['scale'] = SCALE
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg[name]
        loader.batch_size = 2
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.dataset.data_root = root
        loader.dataset.ann_file = 'annotations/instances_train2017.json'
        loader.dataset.data_prefix = dict(img='train2017/')
        loader.dataset.indices = num_images
    cfg.train_dataloader.sampler = dict(type='InfiniteSampler', shuffle=False)
    for name in ('val_evaluator', 'test_evaluator'):
        cfg[name].ann_file = root + 'annotations/instances_train2017.json'
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10 ** 6)
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=1)
    cfg.default_hooks.logger.interval = 1
    cfg.log_processor = dict(by_epoch=False)
    cfg.model.test_cfg.score_thr = 0.0  # random weights: keep boxes so predictions can be compared
    return cfg


def predictions(model, batch):
    """Raw head outputs and post-processed detections of one batch."""
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(copy.deepcopy(batch), False)
        raw = model(**data, mode='tensor')
        out = model.test_step(copy.deepcopy(batch))
    return raw, [o.pred_instances.scores for o in out]


def assert_same_predictions(a, b):
    """Head outputs equal to 1e-4 of their scale; the same detection scores.

    Random-weight detectors score many boxes alike, so boxes are compared
    through the head outputs that produce them rather than after NMS ordering.
    """
    (raw_a, scores_a), (raw_b, scores_b) = a, b
    assert max_rel_diff(raw_a, raw_b) <= 1e-4
    for x, y in zip(scores_a, scores_b):
        assert len(x) > 0 and len(x) == len(y)
        assert torch.allclose(x, y, atol=1e-4)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """One real training iteration; the hook then writes the fused checkpoint and config."""
    work = tmp_path_factory.mktemp('retina_train')
    cfg = coco128_cfg(work)
    runner = Runner.from_cfg(cfg)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    return types.SimpleNamespace(cfg=cfg, runner=runner, work=work, before=before)


def test_one_iteration_learns_and_hook_writes_fused(trained):
    runner = trained.runner
    after = runner.model.state_dict()
    assert any(not torch.equal(trained.before[k], after[k]) for k in after if after[k].is_floating_point())
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert torch.isfinite(torch.tensor(loss))
    assert mmrep.count_unfused(runner.model) > 0  # training never fuses in place
    fused_ckpt = osp.join(trained.work, 'iter_1_fused.pth')
    fused_cfg = osp.join(trained.work, 'retinanet_repghost_1x_fused.py')
    assert osp.isfile(fused_ckpt) and osp.isfile(fused_cfg)
    cfg = Config.fromfile(fused_cfg)
    assert cfg.model.backbone.deploy is True and cfg.load_from == fused_ckpt


def test_fused_config_and_checkpoint_predict_like_trained_model(trained):
    from mmdet.registry import MODELS
    batch = next(iter(trained.runner.test_dataloader))
    expected = predictions(trained.runner.model, batch)
    cfg = Config.fromfile(osp.join(trained.work, 'retinanet_repghost_1x_fused.py'))
    plain = MODELS.build(cfg.model)
    load_checked(plain, cfg.load_from)
    assert count_bn(plain.backbone) == 0 and mmrep.count_unfused(plain) == 0
    assert_same_predictions(expected, predictions(plain, batch))


def test_coco_eval_unfused_equals_fused_and_hook_fuses_before_test(trained):
    runner = trained.runner
    batch = next(iter(runner.test_dataloader))
    unfused_preds = predictions(runner.model, batch)
    unfused = runner.val_loop.run()  # test_loop.run() would call before_test and fuse
    assert mmrep.count_unfused(runner.model) > 0
    assert 'coco/bbox_mAP' in unfused
    work = osp.join(trained.work, 'test_fused')
    cfg = copy.deepcopy(trained.cfg)
    cfg.work_dir = work
    cfg.experiment_name = 'fused_test'
    cfg.load_from = osp.join(trained.work, 'iter_1.pth')
    tester = Runner.from_cfg(cfg)
    fused = tester.test()  # RepDeployHook fuses in before_test
    assert mmrep.count_unfused(tester.model) == 0
    assert count_bn(tester.model.backbone) == 0
    for key, value in unfused.items():
        assert abs(value - fused[key]) <= 1e-3, key
    assert_same_predictions(unfused_preds, predictions(tester.model, batch))


def test_reparameterize_tool_round_trip_and_errors(trained, tmp_path):
    tool = [sys.executable, osp.join(REPO_ROOT, 'tools', 'reparameterize.py'), CONFIG,
            osp.join(trained.work, 'iter_1.pth'), str(tmp_path / 'out'), '--verify',
            '--cfg-options', f'model.test_cfg.score_thr=0.0']
    done = subprocess.run(tool, capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'max relative feature difference' in done.stdout
    again = subprocess.run(tool, capture_output=True, text=True, cwd=REPO_ROOT)
    assert again.returncode != 0 and 'exists; pass --force' in again.stderr
    # the written files build a fused model with the trained model's predictions
    from mmdet.registry import MODELS
    cfg = Config.fromfile(str(tmp_path / 'out' / 'retinanet_repghost_1x_fused.py'))
    plain = MODELS.build(cfg.model)
    load_checked(plain, str(tmp_path / 'out' / 'iter_1_fused.pth'))
    batch = next(iter(trained.runner.test_dataloader))
    assert_same_predictions(predictions(trained.runner.model, batch), predictions(plain, batch))
    # fusing a fused checkpoint again, or loading another model's checkpoint, is refused clearly
    unfused = MODELS.build(Config.fromfile(CONFIG).model)
    with pytest.raises(CheckpointMismatchError, match='already fused'):
        load_checked(unfused, str(tmp_path / 'out' / 'iter_1_fused.pth'))
    other = Config.fromfile(osp.join(REPO_ROOT, 'configs', 'retinanet_repvgg-a0_1x.py'))
    with pytest.raises(CheckpointMismatchError, match='does not match'):
        load_checked(MODELS.build(other.model), osp.join(trained.work, 'iter_1.pth'))


def test_resume_under_torch_weights_only_default(trained, tmp_path):
    cfg = coco128_cfg(tmp_path, max_iters=2)
    for name in ('iter_1.pth', 'last_checkpoint'):
        src = osp.join(trained.work, name)
        data = open(src, 'rb').read()
        if name == 'last_checkpoint':
            data = osp.join(str(tmp_path), 'iter_1.pth').encode()
        with open(osp.join(str(tmp_path), name), 'wb') as f:
            f.write(data)
    cfg.resume = True
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2
    assert osp.isfile(osp.join(str(tmp_path), 'iter_2.pth'))


def test_hook_validates_a_fused_copy_without_touching_the_training_model(trained):
    from mmrep.engine.rep_deploy_hook import RepDeployHook
    runner = trained.runner
    unfused_blocks = mmrep.count_unfused(runner.model)
    metrics = runner.val_loop.run()
    RepDeployHook(validate_fused=True).after_val_epoch(runner, metrics)
    diff = runner.message_hub.get_scalar('val/fused/coco/bbox_mAP_diff').current()
    assert abs(diff) <= 1e-3
    assert mmrep.count_unfused(runner.model) == unfused_blocks > 0
