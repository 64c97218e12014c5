"""The official RepViT COCO / ADE20K checkpoints (mmdet 2.28 / mmseg 0.30) into mmrep's
mmdet 3 Mask R-CNN and mmseg 1 Semantic FPN configs.

The checkpoints are built here in the mmdet 2.28 / mmseg 0.30 key layout, which
is written out from their code, not taken from the mmdet 3 / mmseg 1 models the
conversion must fit:

* the backbone: the official RepViT ``features`` list (THU-MIG/RepViT
  ``detection/repvit.py`` = ``segmentation/repvit.py`` = ``model/repvit.py``
  without the classifier), of timm's weights (:mod:`official_layouts`);
* mmdet 2.28 ``FPN`` (``lateral_convs`` / ``fpn_convs``: ``ConvModule`` without
  norm, so ``.conv.weight`` and ``.conv.bias``), ``RPNHead`` (``rpn_conv``,
  ``rpn_cls``, ``rpn_reg``), ``Shared2FCBBoxHead`` (``shared_fcs.{0,1}``,
  ``fc_cls`` with the background last, ``fc_reg``), ``FCNMaskHead``
  (``convs.{0..3}.conv``, the ``upsample`` deconv, ``conv_logits``), and an
  mmcv 1.x runner checkpoint (``meta`` with ``CLASSES``, ``state_dict``, ``optimizer``);
* mmseg 0.30 ``FPN`` (the same) and ``FPNHead`` (``scale_heads.{i}``: per
  step a ``ConvModule`` with SyncBN, named ``bn``, and an ``Upsample`` without
  weights; ``conv_seg``).
"""
from __future__ import annotations

import argparse
import os
import re

import pytest
import timm
import torch
from conftest import REPO_ROOT, load_tool, shared_data
from fusion_check import count_bn, max_rel_diff, randomize_bn
from official_layouts import official_repvit_state

import mmrep
from mmrep.converters import ConversionError
from mmrep.converters.whole_model import convert_whole_model

DET_CONFIG = os.path.join(REPO_ROOT, 'configs', 'mask-rcnn_repvit-m1.1_fpn_1x_coco.py')
SEG_CONFIG = os.path.join(REPO_ROOT, 'configs', 'fpn_repvit-m1.1_ade20k-512x512_40k.py')
COCO_CLASSES = [f'class_{i}' for i in range(80)]  # names as mmdet 2.x saves them in meta
ADE_CLASSES = [f'ade_{i}' for i in range(150)]


def random_tensors(shapes: dict, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith('num_batches_tracked'):
            out[key] = torch.tensor(1000)
        elif key.endswith('running_var'):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            out[key] = torch.randn(shape, generator=gen) * 0.05
    return out


def mmdet2_fpn_shapes(in_channels, out_channels=256, prefix='neck.') -> dict:
    shapes = {}
    for i, channels in enumerate(in_channels):  # ConvModule(norm_cfg=None): conv with bias
        shapes[f'{prefix}lateral_convs.{i}.conv.weight'] = (out_channels, channels, 1, 1)
        shapes[f'{prefix}lateral_convs.{i}.conv.bias'] = (out_channels,)
        shapes[f'{prefix}fpn_convs.{i}.conv.weight'] = (out_channels, out_channels, 3, 3)
        shapes[f'{prefix}fpn_convs.{i}.conv.bias'] = (out_channels,)
    return shapes


def mmdet2_mask_rcnn_head_shapes(num_classes=80, channels=256, fc=1024, anchors=3) -> dict:
    """mmdet 2.28 RPNHead, Shared2FCBBoxHead and FCNMaskHead of mask_rcnn_r50_fpn.py."""
    shapes = {'rpn_head.rpn_conv.weight': (channels, channels, 3, 3),
              'rpn_head.rpn_conv.bias': (channels,),
              'rpn_head.rpn_cls.weight': (anchors, channels, 1, 1),  # use_sigmoid: 1 per anchor
              'rpn_head.rpn_cls.bias': (anchors,),
              'rpn_head.rpn_reg.weight': (anchors * 4, channels, 1, 1),
              'rpn_head.rpn_reg.bias': (anchors * 4,),
              'roi_head.bbox_head.shared_fcs.0.weight': (fc, channels * 7 * 7),
              'roi_head.bbox_head.shared_fcs.0.bias': (fc,),
              'roi_head.bbox_head.shared_fcs.1.weight': (fc, fc),
              'roi_head.bbox_head.shared_fcs.1.bias': (fc,),
              'roi_head.bbox_head.fc_cls.weight': (num_classes + 1, fc),
              'roi_head.bbox_head.fc_cls.bias': (num_classes + 1,),
              'roi_head.bbox_head.fc_reg.weight': (num_classes * 4, fc),
              'roi_head.bbox_head.fc_reg.bias': (num_classes * 4,),
              'roi_head.mask_head.upsample.weight': (channels, channels, 2, 2),  # ConvTranspose2d
              'roi_head.mask_head.upsample.bias': (channels,),
              'roi_head.mask_head.conv_logits.weight': (num_classes, channels, 1, 1),
              'roi_head.mask_head.conv_logits.bias': (num_classes,)}
    for i in range(4):
        shapes[f'roi_head.mask_head.convs.{i}.conv.weight'] = (channels, channels, 3, 3)
        shapes[f'roi_head.mask_head.convs.{i}.conv.bias'] = (channels,)
    return shapes


def mmseg0_fpn_head_shapes(num_classes=150, channels=128, in_channels=256,
                           strides=(4, 8, 16, 32)) -> dict:
    """mmseg 0.30 FPNHead: per level max(1, log2(stride / 4)) ConvModule (+ Upsample) steps."""
    shapes = {'decode_head.conv_seg.weight': (num_classes, channels, 1, 1),
              'decode_head.conv_seg.bias': (num_classes,)}
    for i, stride in enumerate(strides):
        steps = max(1, (stride // strides[0]).bit_length() - 1)
        for k in range(steps):
            index = 2 * k if stride != strides[0] else k  # Upsample modules sit in between
            prefix = f'decode_head.scale_heads.{i}.{index}.'
            shapes[prefix + 'conv.weight'] = (channels, in_channels if k == 0 else channels, 3, 3)
            for leaf in ('weight', 'bias', 'running_mean', 'running_var'):
                shapes[prefix + f'bn.{leaf}'] = (channels,)
            shapes[prefix + 'bn.num_batches_tracked'] = ()
    return shapes


@pytest.fixture(scope='module')
def timm_m1_1():
    model = randomize_bn(timm.create_model('repvit_m1_1'), seed=11).eval()
    backbone = {f'backbone.{k}': v for k, v in official_repvit_state(model).items()
                if not k.startswith('classifier.')}  # the detection backbone has no classifier
    return model, backbone


def mmdet2_checkpoint(path, backbone: dict, seed=0) -> dict:
    state = dict(backbone)
    state.update(random_tensors(mmdet2_fpn_shapes([64, 128, 256, 512]), seed))
    state.update(random_tensors(mmdet2_mask_rcnn_head_shapes(), seed + 1))
    regressors = ('rpn_head.rpn_reg.', 'roi_head.bbox_head.fc_reg.')
    for key in [k for k in state if k.startswith(regressors)]:
        state[key] = torch.zeros_like(state[key])  # boxes = anchors: no degenerate random boxes
    torch.save({'meta': dict(mmdet_version='2.28.2', CLASSES=COCO_CLASSES, epoch=12, iter=87960),
                'state_dict': state,
                'optimizer': {'state': {0: {'step': torch.tensor(5.), 'exp_avg': torch.zeros(3)}},
                              'param_groups': [{'lr': 2e-6, 'params': [0]}]}}, path)
    return state


def test_mmdet2_mask_rcnn_repvit_loads_strictly_into_the_mmdet3_config(tmp_path, timm_m1_1):
    from mmdet.apis import init_detector
    from mmdet.utils import register_all_modules
    timm_model, backbone = timm_m1_1
    state = mmdet2_checkpoint(tmp_path / 'repvit_m1_1_coco.pth', backbone)
    report = convert_whole_model(str(tmp_path / 'repvit_m1_1_coco.pth'), str(tmp_path / 'out.pth'),
                                 DET_CONFIG)
    assert report['arch'] == 'repvit-m1.1' and report['family'] == 'repvit'
    assert report['renamed'] == len(backbone) and report['kept'] == len(state) - len(backbone)
    assert report['dropped'] == []

    converted = torch.load(tmp_path / 'out.pth', weights_only=True)
    for key in state:  # the necks and heads keep their mmdet 2.28 names and values
        if not key.startswith('backbone.'):
            assert torch.equal(converted['state_dict'][key], state[key]), key
    assert converted['meta']['dataset_meta'] == {'classes': COCO_CLASSES}

    # stock mmdet 3 API: strict load, classes from the checkpoint
    register_all_modules()
    model = init_detector(DET_CONFIG, str(tmp_path / 'out.pth'), device='cpu')
    model.load_state_dict(converted['state_dict'], strict=True)
    assert list(model.dataset_meta['classes']) == COCO_CLASSES
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = timm_model.forward_intermediates(x, intermediates_only=True)
        got = model.backbone(x)  # taps: the official out_indices [2, 6, 20, 24]
        assert max_rel_diff(expected, got) < 1e-4
        neck = model.neck(got)
        lateral = model.neck.lateral_convs[3].conv
        assert torch.equal(lateral.weight, state['neck.lateral_convs.3.conv.weight'])
        assert neck[0].shape == (1, 256, 24, 32) and len(neck) == 5

    # a full detection on a real image with the stock API, unfused and fused
    from mmdet.apis import inference_detector
    image = os.path.join(shared_data('coco128'), 'train2017', '000000000009.jpg')
    model.roi_head.test_cfg.score_thr = 0.0  # random heads: keep every box
    for step in model.cfg.test_dataloader.dataset.pipeline:  # small images: a fast test
        if step['type'] == 'Resize':
            step['scale'] = (320, 256)
    fused_model = mmrep.reparameterize_model(model)
    assert count_bn(fused_model.backbone) == 0
    for detector in (model, fused_model):
        instances = inference_detector(detector, image).pred_instances
        assert len(instances) == 100 and instances.masks.shape[1:] == (480, 640)
    # the fused detector computes the same features and RPN maps (random heads rank
    # near-equal scores arbitrarily, so final boxes are not compared one by one)
    with torch.no_grad():
        feats, fused_feats = model.extract_feat(x), fused_model.extract_feat(x)
        assert max_rel_diff(feats, fused_feats) < 1e-4
        assert max_rel_diff(model.rpn_head(feats), fused_model.rpn_head(fused_feats)) < 1e-4

    # the stock offline fusion: a fused checkpoint and a deploy=True config that loads it
    reparameterize = load_tool('reparameterize')
    reparameterize.main(argparse.Namespace(config=DET_CONFIG, checkpoint=str(tmp_path / 'out.pth'),
                                           out_dir=str(tmp_path / 'fused'), force=False,
                                           verify=True, cfg_options=None))
    fused_cfg = str(tmp_path / 'fused' / 'mask-rcnn_repvit-m1.1_fpn_1x_coco_fused.py')
    deployed = init_detector(fused_cfg, str(tmp_path / 'fused' / 'out_fused.pth'), device='cpu')
    assert deployed.backbone.deploy and count_bn(deployed.backbone) == 0
    assert list(deployed.dataset_meta['classes']) == COCO_CLASSES
    with torch.no_grad():
        assert max_rel_diff(feats, deployed.extract_feat(x)) < 1e-4


def test_mmseg0_semantic_fpn_repvit_loads_strictly_into_the_mmseg1_config(tmp_path, timm_m1_1):
    from mmseg.apis import init_model
    timm_model, backbone = timm_m1_1
    state = dict(backbone)
    state.update(random_tensors(mmdet2_fpn_shapes([64, 128, 256, 512]), 3))
    state.update(random_tensors(mmseg0_fpn_head_shapes(), 4))
    torch.save({'meta': dict(mmseg_version='0.30.0', CLASSES=ADE_CLASSES,
                             PALETTE=[[i, i, i] for i in range(150)]),
                'state_dict': state}, tmp_path / 'repvit_m1_1_ade20k.pth')
    report = convert_whole_model(str(tmp_path / 'repvit_m1_1_ade20k.pth'),
                                 str(tmp_path / 'out.pth'), SEG_CONFIG)
    assert report['kept'] == len(state) - len(backbone)
    model = init_model(SEG_CONFIG, str(tmp_path / 'out.pth'), device='cpu')
    converted = torch.load(tmp_path / 'out.pth', weights_only=True)
    model.load_state_dict(converted['state_dict'], strict=True)
    assert list(model.dataset_meta['classes']) == ADE_CLASSES
    assert model.dataset_meta['palette'][3] == [3, 3, 3]
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # the official segmentation taps ([3, 7, 21, 24]): the stage ends, then the next pre-block
        stage_ends = timm_model.forward_intermediates(x, intermediates_only=True)
        expected = [timm_model.stages[i + 1].downsample.pre_block(stage_ends[i]) for i in range(3)]
        expected.append(stage_ends[3])
        got = model.backbone(x)
        assert max_rel_diff(expected, got) < 1e-4
        assert max_rel_diff(stage_ends, got) > 1e-2  # the two tap sets differ
        logits = model.decode_head(model.neck(got))
        fused = mmrep.reparameterize_model(model)
        fused_logits = fused.decode_head(fused.neck(fused.backbone(x)))
    assert logits.shape == (1, 150, 16, 24)
    assert max_rel_diff(logits, fused_logits) < 1e-4


def test_whole_model_checkpoint_of_another_model_is_refused_naming_keys(tmp_path, timm_m1_1):
    _, backbone = timm_m1_1
    mmdet2_checkpoint(tmp_path / 'coco.pth', backbone)
    # the COCO detector given with the ADE20K segmentor's config
    with pytest.raises(ConversionError, match=r'missing keys \(decode_head\.conv_seg\.bias.*'
                                              r'unexpected keys \(roi_head\.'):
        convert_whole_model(str(tmp_path / 'coco.pth'), str(tmp_path / 'out.pth'), SEG_CONFIG)
    assert not (tmp_path / 'out.pth').exists()
    # an M1.5 detector given with the M1.1 config: its backbone has other depths
    with torch.device('meta'):
        m1_5 = official_repvit_state(timm.create_model('repvit_m1_5'))
    state = {f'backbone.{k}': torch.zeros(v.shape) for k, v in m1_5.items()
             if not k.startswith('classifier.')}
    torch.save({'state_dict': state}, tmp_path / 'm1_5.pth')
    with pytest.raises(ConversionError, match=r'\[4, 4, 24, 4\] blocks per stage, --arch '
                                              r'repvit-m1\.1 has \[2, 2, 12, 2\]'):
        convert_whole_model(str(tmp_path / 'm1_5.pth'), str(tmp_path / 'out.pth'), DET_CONFIG)
    # nothing is overwritten
    (tmp_path / 'out.pth').write_bytes(b'mine')
    with pytest.raises(FileExistsError, match='--force'):
        convert_whole_model(str(tmp_path / 'coco.pth'), str(tmp_path / 'out.pth'), DET_CONFIG)
    assert (tmp_path / 'out.pth').read_bytes() == b'mine'


def test_convert_whole_model_cli(tmp_path, timm_m1_1, capsys):
    _, backbone = timm_m1_1
    mmdet2_checkpoint(tmp_path / 'coco.pth', backbone)
    tool = load_tool('convert_whole_model')
    assert tool.main([str(tmp_path / 'coco.pth'), str(tmp_path / 'out.pth'), DET_CONFIG]) == 0
    out = capsys.readouterr().out
    assert re.search(r'renamed \d+ backbone tensors', out) and 'load_from' in out
    assert tool.main([str(tmp_path / 'coco.pth'), str(tmp_path / 'seg.pth'), SEG_CONFIG]) == 1
    assert 'decode_head.conv_seg' in capsys.readouterr().err
    # the COCO backbone initializes another detector's RepViT (strictly, prefix 'backbone')
    from mmrep.models.backbones.repvit import RepViT
    backbone_only = RepViT('m1.1', init_cfg=dict(type='Pretrained', prefix='backbone',
                                                 checkpoint=str(tmp_path / 'out.pth')))
    backbone_only.init_weights()
    converted = torch.load(tmp_path / 'out.pth', weights_only=True)['state_dict']
    assert torch.equal(backbone_only.stem[0].conv.weight, converted['backbone.stem.0.conv.weight'])


def test_repvit_configs_follow_the_official_recipes():
    from mmengine.config import Config
    det, seg = Config.fromfile(DET_CONFIG), Config.fromfile(SEG_CONFIG)
    for cfg, decay in ((det, 0.05), (seg, 1e-4)):
        optimizer = cfg.optim_wrapper.optimizer
        assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == ('AdamW', 2e-4, decay)
        backbone = cfg.model.backbone
        assert (backbone.type, backbone.arch, backbone.norm_eval) == ('RepViT', 'm1.1', True)
        assert backbone.norm_cfg.type == 'SyncBN'
    assert not det.model.backbone.get('taps_after_pre_block', False)
    assert seg.model.backbone.taps_after_pre_block
    assert det.param_scheduler[0].start_factor == 1e-6
    assert det.param_scheduler[1].milestones == [8, 11] and det.train_cfg.max_epochs == 12
    assert seg.param_scheduler[0].type == 'PolyLR' and seg.param_scheduler[0].eta_min == 1e-6
    assert seg.train_cfg.max_iters == 40000
    assert det.model.neck.in_channels == seg.model.neck.in_channels == [64, 128, 256, 512]
