"""The shipped detection / segmentation configs: they parse and build, the
detection and CamVid configs train one iteration on real data through mmengine's
Runner, and fused models predict what the unfused ones predict.

Images are shrunk (about 320x256) and runs are one iteration, batch 1, so the
file stays within a few minutes on 2 CPU cores.
"""
import math
import os

import pytest
import torch
from conftest import REPO_ROOT, shared_data
from fusion_check import count_bn

import mmrep  # noqa: F401  (registers models, hook and the mmrep:: config scope)
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

DET_CONFIGS = ['mask-rcnn_orepa-r50_fpn_1x', 'retinanet_orepa-r18_1x',
               'retinanet_repghost_reppafpn_1x', 'mask-rcnn_repvgg-a0_reppafpn_1x',
               'yolox-style_repvgg-a0_reppafpn', 'mask-rcnn_repvit-m1.1_fpn_1x_coco',
               'retinanet_mobileone-s1_fpn_1x_coco', 'retinanet_mobileone-s0_reppafpn-slim_shapes']
SEG_CONFIGS = ['upernet_replknet-31b_ade20k', 'upernet_repvgg-a0_camvid',
               'fpn_repvit-m1.1_ade20k-512x512_40k']
SMALL_SCALE = (320, 256)


def load_config(name: str) -> Config:
    return Config.fromfile(os.path.join(REPO_ROOT, 'configs', f'{name}.py'))


def scope_of(name: str) -> str:
    return 'mmseg' if name in SEG_CONFIGS else 'mmdet'


def build_model(cfg: Config, scope: str):
    init_default_scope(scope)
    if scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmdet.registry import MODELS
    return MODELS.build(cfg.model)


def shrink_pipeline(pipeline: list, scale=SMALL_SCALE) -> None:
    """Scale every resize/mosaic/pad size of a pipeline down to about ``scale``."""
    for step in pipeline:
        for key in ('scale', 'img_scale'):
            if key in step:
                step[key] = scale
        if step['type'] == 'RandomAffine':
            step['border'] = (-scale[1] // 2, -scale[1] // 2)
        if step['type'] == 'Pad' and 'size' in step:
            step['size'] = (scale[1], scale[1])


def quiet_runner_cfg(cfg: Config, tmp_path, name: str) -> Config:
    """One training iteration, no validation/testing/checkpoints, in ``tmp_path``."""
    cfg.work_dir = str(tmp_path)
    cfg.experiment_name = f'{name}_{tmp_path.name}'
    cfg.log_level = 'WARNING'
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=1, val_interval=10)
    cfg.param_scheduler = None
    for split in ('val', 'test'):
        cfg[f'{split}_dataloader'] = cfg[f'{split}_cfg'] = cfg[f'{split}_evaluator'] = None
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger = None
    cfg.randomness = dict(seed=0)
    cfg.model.backbone.init_cfg = None  # offline: the configs name ImageNet weights on the hub
    return cfg


def coco128_dataset(dataset: dict, pipeline: list, num_images=None) -> dict:
    root = shared_data('coco128')
    dataset = dict(dataset, data_root=root, ann_file='annotations/instances_train2017.json',
                   data_prefix=dict(img='train2017/'), pipeline=pipeline)
    if num_images is not None:
        dataset['indices'] = num_images
    return dataset


def params_snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


class WeightsBeforeFirstIteration(Hook):
    """Copies the trainable weights after the Runner's init, before the first update."""

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if batch_idx == 0:
            self.params = params_snapshot(runner.model)


def train_one_iteration(cfg: Config, name: str) -> Runner:
    """Train ``cfg`` for one iteration; assert a finite loss and updated weights."""
    runner = Runner.from_cfg(cfg)
    snapshot = WeightsBeforeFirstIteration()
    runner.register_hook(snapshot)
    runner.train()
    before = snapshot.params
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert math.isfinite(loss) and loss > 0, f'{name}: loss {loss}'
    after = params_snapshot(runner.model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, f'{name}: only {len(changed)}/{len(before)} changed'
    assert any(k.startswith('backbone.') for k in changed)
    assert any(k.startswith('neck.') for k in changed) or not hasattr(runner.model, 'neck')
    # RepDeployHook exported a fused checkpoint; this run saved no checkpoint, so it is
    # named after the iteration and written to the run's own log dir
    assert os.path.isfile(os.path.join(runner.log_dir, 'iter_1_fused.pth'))
    return runner


def det_train_cfg(name: str, tmp_path) -> Config:
    cfg = quiet_runner_cfg(load_config(name), tmp_path, name)
    loader = cfg.train_dataloader
    loader.batch_size, loader.num_workers, loader.persistent_workers = 1, 0, False
    loader.sampler = dict(type='DefaultSampler', shuffle=False)
    dataset = loader.dataset
    if dataset.type == 'MultiImageMixDataset':  # YOLOX: Mosaic/MixUp around a CocoDataset
        shrink_pipeline(dataset.pipeline)
        dataset.dataset = coco128_dataset(dataset.dataset, dataset.dataset.pipeline, 16)
        cfg.model.data_preprocessor.batch_augments = None
    else:
        shrink_pipeline(dataset.pipeline)
        loader.dataset = coco128_dataset(dataset, dataset.pipeline, 16)
    return cfg


@pytest.mark.parametrize('name', DET_CONFIGS + SEG_CONFIGS)
def test_config_parses_and_builds(name):
    cfg = load_config(name)
    assert 'mmrep' in cfg.custom_imports['imports']
    assert any(h['type'] == 'RepDeployHook' for h in cfg.custom_hooks)
    model = build_model(cfg, scope_of(name))
    channels = list(model.backbone.out_channels)
    neck_in = cfg.model.neck.in_channels if 'neck' in cfg.model else cfg.model.decode_head.in_channels
    picked = [channels[i] for i in cfg.model.backbone.out_indices]
    assert list(neck_in) == picked, f'{name}: neck expects {neck_in}, backbone gives {picked}'
    assert mmrep.count_unfused(model) > 0


def test_replknet_ade20k_recipe():
    """AdamW 2e-4 / wd 0.05 with no decay on any norm, poly decay, drop path 0.5."""
    from mmengine.optim import build_optim_wrapper
    cfg = load_config('upernet_replknet-31b_ade20k')
    assert cfg.model.backbone.drop_path_rate == 0.5
    assert cfg.param_scheduler[-1]['type'] == 'PolyLR'
    model = build_model(cfg, 'mmseg')
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(wrapper.optimizer).__name__ == 'AdamW'
    decay_of = {id(p): g['weight_decay'] for g in wrapper.optimizer.param_groups for p in g['params']}
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(decay_of[id(m.weight)] == 0 for m in norms)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(decay_of[id(m.weight)] == 0.05 for m in convs)
    assert all(g['lr'] == 2e-4 for g in wrapper.optimizer.param_groups)


@pytest.mark.parametrize('name', ['retinanet_repghost_reppafpn_1x', 'mask-rcnn_repvgg-a0_reppafpn_1x'])
def test_detector_with_reppafpn_fuses_to_no_batchnorm(name):
    init_default_scope('mmdet')
    cfg = load_config(name)
    cfg.model.backbone.init_cfg = None  # offline: the config names ImageNet weights on the hub
    model = build_model(cfg, 'mmdet')
    model.init_weights()
    assert count_bn(model.backbone) > 0 and count_bn(model.neck) > 0
    fused = mmrep.reparameterize_model(model).eval()
    assert count_bn(fused) == 0  # RetinaHead / Mask R-CNN's default heads have no norms
    assert mmrep.count_unfused(fused) == 0
    x = torch.randn(1, 3, 128, 160)
    model.eval()
    with torch.no_grad():
        for a, b in zip(model.extract_feat(x), fused.extract_feat(x)):
            assert a.shape == b.shape
            assert (a - b).abs().max() <= 1e-4 * a.abs().max()


@pytest.mark.parametrize('name', ['retinanet_repghost_reppafpn_1x', 'mask-rcnn_repvgg-a0_reppafpn_1x',
                                  'yolox-style_repvgg-a0_reppafpn', 'mask-rcnn_repvit-m1.1_fpn_1x_coco',
                                  'retinanet_mobileone-s1_fpn_1x_coco'])
def test_detector_trains_one_iteration_on_coco128(name, tmp_path):
    init_default_scope('mmdet')
    train_one_iteration(det_train_cfg(name, tmp_path), name)


def calibrate_bn(model, dataloader):
    """Sets BN running stats to the exact statistics of ``dataloader``'s images.

    After one large un-warmed SGD step the running stats lag far behind the
    activations; calibrated stats keep the random detector's scores meaningful.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for batch in dataloader:
            model.extract_feat(model.data_preprocessor(batch, False)['inputs'])
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def run_evaluation(model, dataloader, evaluator):
    """Predictions and metrics of ``model`` on ``dataloader``."""
    predictions = []
    model.eval()
    with torch.no_grad():
        for batch in dataloader:
            outputs = model.test_step(batch)
            evaluator.process(data_samples=outputs, data_batch=batch)
            predictions.extend(outputs)
    return predictions, evaluator.evaluate(len(dataloader.dataset))


def test_mask_rcnn_orepa_trains_and_fused_evaluation_matches(tmp_path):
    """One iteration on coco128, then COCO bbox+segm on 4 images unfused and fused."""
    name = 'mask-rcnn_orepa-r50_fpn_1x'
    init_default_scope('mmdet')
    cfg = det_train_cfg(name, tmp_path)
    runner = train_one_iteration(cfg, name)  # also gives BN non-trivial running stats
    model = runner.model
    # random heads score about 1/81: keep every box so the comparison has predictions
    # (the heads hold their own copies of test_cfg)
    model.rpn_head.test_cfg.nms_pre = model.rpn_head.test_cfg.max_per_img = 200
    model.roi_head.test_cfg.score_thr = 0.0
    model.roi_head.test_cfg.max_per_img = 20

    test_cfg = load_config(name)
    pipeline = test_cfg.test_dataloader.dataset.pipeline
    shrink_pipeline(pipeline)
    loader_cfg = dict(test_cfg.test_dataloader, batch_size=1, num_workers=0,
                      persistent_workers=False,
                      dataset=coco128_dataset(test_cfg.test_dataloader.dataset, pipeline, 4))
    dataloader = Runner.build_dataloader(loader_cfg)
    ann_file = os.path.join(shared_data('coco128'), 'annotations/instances_train2017.json')
    calibrate_bn(model, dataloader)
    results = []
    for candidate in (model, mmrep.reparameterize_model(model)):
        evaluator = runner.build_evaluator(dict(test_cfg.test_evaluator, ann_file=ann_file))
        evaluator.dataset_meta = dataloader.dataset.metainfo
        results.append(run_evaluation(candidate, dataloader, evaluator))
    (unfused, metrics), (fused, fused_metrics) = results
    assert count_bn(mmrep.reparameterize_model(model).backbone) == 0
    assert sum(len(p.pred_instances) for p in unfused) > 0
    for a, b in zip(unfused, fused):
        assert len(a.pred_instances) == len(b.pred_instances)
        # boxes are in original-image pixels (up to 640): float32 rounding through
        # R50 gives ~1e-5 relative, i.e. a few 1e-3 px
        boxes, fused_boxes = a.pred_instances.bboxes, b.pred_instances.bboxes
        assert (boxes - fused_boxes).abs().max() <= 1e-4 * boxes.abs().max()
        assert torch.equal(a.pred_instances.labels, b.pred_instances.labels)
    assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= set(metrics)
    for key, value in metrics.items():
        assert fused_metrics[key] == pytest.approx(value, abs=1e-6), key


def seg_cfg(tmp_path) -> Config:
    name = 'upernet_repvgg-a0_camvid'
    root = shared_data('camvid')
    cfg = quiet_runner_cfg(load_config(name), tmp_path, name)
    crop = (128, 128)
    cfg.model.data_preprocessor.size = crop
    loader = cfg.train_dataloader
    loader.batch_size, loader.num_workers, loader.persistent_workers = 2, 0, False
    loader.sampler = dict(type='DefaultSampler', shuffle=False)
    loader.dataset.data_root = root
    loader.dataset.indices = 4
    shrink_pipeline(loader.dataset.pipeline, (240, 180))
    for step in loader.dataset.pipeline:
        if step['type'] == 'RandomCrop':
            step['crop_size'] = crop
    return cfg


def test_camvid_labels_are_class_ids_and_void():
    """The config's assumption: CamVid labels are 0-10 plus the ignored void 11."""
    import numpy as np
    from PIL import Image
    root = shared_data('camvid')
    folder = os.path.join(root, 'trainannot')
    values = set()
    for file in sorted(os.listdir(folder))[:8]:
        values |= set(np.unique(np.array(Image.open(os.path.join(folder, file)))).tolist())
    cfg = load_config('upernet_repvgg-a0_camvid')
    assert values <= set(range(12)) and 11 in values and len(values) > 5
    assert cfg.model.decode_head.ignore_index == cfg.val_evaluator.ignore_index == 11
    assert cfg.model.data_preprocessor.seg_pad_val == 11
    assert len(cfg.metainfo['classes']) == cfg.model.decode_head.num_classes == 11


def test_upernet_camvid_trains_and_fused_miou_matches(tmp_path):
    init_default_scope('mmseg')
    cfg = seg_cfg(tmp_path)
    runner = train_one_iteration(cfg, 'upernet_repvgg-a0_camvid')
    model = runner.model

    test_cfg = load_config('upernet_repvgg-a0_camvid')
    pipeline = test_cfg.val_dataloader.dataset.pipeline
    shrink_pipeline(pipeline, (240, 180))
    dataset = dict(test_cfg.val_dataloader.dataset, data_root=shared_data('camvid'),
                   pipeline=pipeline, indices=3)
    dataloader = Runner.build_dataloader(dict(test_cfg.val_dataloader, dataset=dataset,
                                              num_workers=0, persistent_workers=False))
    results = []
    for candidate in (model, mmrep.reparameterize_model(model)):
        evaluator = runner.build_evaluator(test_cfg.val_evaluator)
        evaluator.dataset_meta = dataloader.dataset.metainfo
        results.append(run_evaluation(candidate, dataloader, evaluator))
    (unfused, metrics), (fused, fused_metrics) = results
    assert count_bn(mmrep.reparameterize_model(model).backbone) == 0
    for a, b in zip(unfused, fused):
        logits, fused_logits = a.seg_logits.data, b.seg_logits.data
        assert (logits - fused_logits).abs().max() <= 1e-4 * logits.abs().max()
        agree = (a.pred_sem_seg.data == b.pred_sem_seg.data).float().mean()
        assert agree > 0.999
    assert 'mIoU' in metrics and 0 <= metrics['mIoU'] <= 100
    assert fused_metrics['mIoU'] == pytest.approx(metrics['mIoU'], abs=0.05)
