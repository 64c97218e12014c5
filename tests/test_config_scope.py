"""The ``mmrep`` config scope and the own-project overrides, in-process and fast.

mmengine tags the dicts a downstream config inherits from an ``mmrep::`` base
with ``_scope_='mmrep'``; mmrep's registries (mmrep.registry) must then build
the host's classes (mmdet's or mmseg's, whichever scope was current). And the
override docs/en/user_guides/own_project.md shows must re-point every shipped
config: its loaders, evaluators, classes and weights.
(tests/test_stock_tools.py runs the same with stock tools, in subprocesses.)
"""
import argparse
import glob
import os.path as osp

import pytest
from conftest import REPO_ROOT
from own_project_page import NUTS_CLASSES, page_file, page_line, with_base

import mmrep  # noqa: F401  (registers the registries and the mmrep:: config scope)
import mmrep.registry as mmrep_registry
from mmengine import registry as mmengine_registry
from mmengine.config import Config, DictAction
from mmengine.registry import DefaultScope

from mmrep.engine import cli
from mmrep.models.backbones.repvgg import RepVGG

WEIGHTS = dict(type='Pretrained', checkpoint='pretrained/repvgg-a0.pth')


def test_every_mmengine_root_registry_has_an_mmrep_child():
    """Else a ``_scope_='mmrep'`` dict of that kind falls back to the root, with mmengine's warning."""
    roots = [r for r in vars(mmengine_registry).values()
             if isinstance(r, mmengine_registry.Registry) and r.parent is None]
    assert len(roots) >= 20
    for root in roots:
        child = root._search_child('mmrep')
        assert isinstance(child, mmrep_registry.HostScopeRegistry), root.name
        assert child.parent is root and child.build_func is root.build_func, root.name


@pytest.mark.parametrize('host', ['mmdet', 'mmseg'])
def test_mmrep_scope_builds_the_current_hosts_class(host):
    from importlib import import_module
    host_transforms = import_module(f'{host}.registry').TRANSFORMS
    with DefaultScope.overwrite_default_scope(host):
        built = mmengine_registry.TRANSFORMS.build(dict(type='LoadAnnotations', _scope_='mmrep'))
        assert type(built) is host_transforms.get('LoadAnnotations')
        assert mmrep_registry.host_scope() == host
        with DefaultScope.overwrite_default_scope('mmrep'):  # as mmengine switches for _scope_
            assert mmrep_registry.host_scope() == host
            assert mmrep_registry.TRANSFORMS.get('Resize') is host_transforms.get('Resize')


def test_mmrep_scope_lookup_order():
    from mmdet.registry import TRANSFORMS as MMDET_TRANSFORMS
    from mmseg.registry import TRANSFORMS as MMSEG_TRANSFORMS
    with DefaultScope.overwrite_default_scope('mmseg'):
        # mmrep's own classes first, whatever the host
        assert mmrep_registry.MODELS.get('RepVGG') is RepVGG
        # a scoped name goes to that scope, also from the mmrep registry
        assert mmrep_registry.TRANSFORMS.get('mmdet.LoadAnnotations') is \
            MMDET_TRANSFORMS.get('LoadAnnotations')
        assert mmrep_registry.TRANSFORMS.get('LoadAnnotations') is \
            MMSEG_TRANSFORMS.get('LoadAnnotations')
        # mmengine's own classes through the parents
        assert mmrep_registry.HOOKS.get('CheckpointHook').__module__.startswith('mmengine.')
        with pytest.raises(KeyError, match='NoSuchTransform is not in the mmrep::transform'):
            mmengine_registry.TRANSFORMS.build(dict(type='NoSuchTransform', _scope_='mmrep'))
    with DefaultScope.overwrite_default_scope('mmdet'):
        assert isinstance(mmengine_registry.MODELS.build(dict(type='mmrep.RepVGG', arch='A0')), RepVGG)


def test_without_a_host_scope_the_mmrep_registries_fall_back_to_mmengine():
    saved = DefaultScope._instance_dict
    DefaultScope._instance_dict = type(saved)()  # a program that set no default scope
    try:
        with DefaultScope.overwrite_default_scope('mmrep'):
            assert mmrep_registry.host_scope() is None
            assert mmrep_registry.HOOKS.get('CheckpointHook').__module__.startswith('mmengine.')
            # mmcv's generic transform (in mmengine's root), no host's
            assert mmrep_registry.TRANSFORMS.get('LoadAnnotations').__module__.startswith('mmcv.')
            assert mmrep_registry.TRANSFORMS.get('PackDetInputs') is None
    finally:
        DefaultScope._instance_dict = saved


# --- the own-project override on every shipped config -------------------------------------

SHIPPED = sorted(osp.basename(p) for p in glob.glob(osp.join(REPO_ROOT, 'configs', '*.py')))


def own_project_child(name: str) -> str:
    """The page's override for the shipped config ``name``, chosen by what the config builds."""
    base = Config.fromfile(osp.join(REPO_ROOT, 'configs', name))
    model = base.model.type
    if model == 'EncoderDecoder':
        return with_base(page_file('configs/camvid_upernet_repvgg-a0.py'), name)
    if model == 'YOLOX':
        return with_base(page_file('configs/nuts_yolox-style_repvgg-a0.py'), name)
    detection = with_base(page_file('configs/nuts_retinanet_repvgg-a0.py'), name)
    lines = {'RetinaNet': page_line('# RetinaNet configs'),
             'MaskRCNN': page_line('# Mask R-CNN configs')}
    assert model in lines, (f'{name} builds a {model}: docs/en/user_guides/own_project.md '
                            'shows no num_classes override for it')
    return detection.replace(page_line('# RetinaNet configs'), lines[model])


def innermost(dataset: dict) -> dict:
    while 'dataset' in dataset:  # MultiImageMixDataset, ...
        dataset = dataset['dataset']
    return dataset


def num_classes_values(node) -> list:
    found = []
    if isinstance(node, dict):
        found += [v for k, v in node.items() if k == 'num_classes']
        for value in node.values():
            found += num_classes_values(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            found += num_classes_values(value)
    return found


@pytest.mark.parametrize('name', SHIPPED)
def test_own_project_override_repoints_every_shipped_config(name, tmp_path):
    child = tmp_path / 'child.py'
    child.write_text(own_project_child(name))
    cfg = Config.fromfile(str(child))
    segmentation = cfg.model.type == 'EncoderDecoder'
    for split in ('train', 'val', 'test'):
        dataset = innermost(cfg[f'{split}_dataloader'].dataset)
        if segmentation:
            assert dataset.data_root == 'data/camvid/', split
        else:
            assert dataset.data_root == 'data/nuts/', split
            assert dataset.data_prefix == dict(img='images/'), split
            assert tuple(dataset.metainfo['classes']) == NUTS_CLASSES, split
            expected = 'annotations/train.json' if split == 'train' else 'annotations/val.json'
            assert dataset.ann_file == expected, split
    if not segmentation:
        for split in ('val', 'test'):
            evaluators = cfg[f'{split}_evaluator']
            for evaluator in evaluators if isinstance(evaluators, list) else [evaluators]:
                assert evaluator.ann_file == 'data/nuts/annotations/val.json', split
        values = num_classes_values(cfg.model)
        assert values and set(values) == {len(NUTS_CLASSES)}, values
        for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
                    'test_evaluator'):
            assert 'data/coco' not in repr(cfg[key]), key  # nothing of COCO's left


@pytest.mark.parametrize('name', SHIPPED)
def test_printed_weights_override_merges_into_every_shipped_config(name, tmp_path):
    """As a child config, as stock tools' dotted --cfg-options, as mmrep tools' dict form."""
    child = tmp_path / 'child.py'
    child.write_text(f"_base_ = 'mmrep::configs/{name}'\n"
                     f'model = dict(backbone=dict(init_cfg={WEIGHTS!r}))\n')
    assert Config.fromfile(str(child)).model.backbone.init_cfg == WEIGHTS

    stock = argparse.ArgumentParser()
    stock.add_argument('--cfg-options', nargs='+', action=DictAction)
    dotted = stock.parse_args(['--cfg-options', 'model.backbone.init_cfg.type=Pretrained',
                               f'model.backbone.init_cfg.checkpoint={WEIGHTS["checkpoint"]}'])
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', name))
    cfg.merge_from_dict(dotted.cfg_options)
    assert cfg.model.backbone.init_cfg == WEIGHTS

    args = cli.make_parser('test', 'config').parse_args(
        [osp.join(REPO_ROOT, 'configs', name), '--work-dir', str(tmp_path), '--cfg-options',
         f'model.backbone.init_cfg=dict(type=\'Pretrained\', checkpoint=\'{WEIGHTS["checkpoint"]}\')'])
    assert cli.load_config(args).model.backbone.init_cfg == WEIGHTS


def test_mmrep_tools_read_dict_values_and_refuse_code(capsys):
    parser = cli.make_parser('test', 'config')
    args = parser.parse_args(['c.py', '--cfg-options',
                              "a=dict(b=1, c='x', d=None, e=[1, (2, 3)], f=dict(g=True))",
                              'h=[1,2]', 'i=text'])
    assert args.cfg_options == {'a': dict(b=1, c='x', d=None, e=[1, (2, 3)], f=dict(g=True)),
                                'h': [1, 2], 'i': 'text'}
    for value, message in [('k=dict(type=Pretrained)', "quote strings: 'Pretrained'"),
                           ("k=dict(a=__import__('os'))", 'is not a literal'),
                           ('k=dict(1)', 'keyword arguments only'),
                           ('k=dict(a=1', 'not a Python expression'),
                           ('k', 'expected KEY=VALUE')]:
        with pytest.raises(SystemExit):
            parser.parse_args(['c.py', '--cfg-options', value])
        assert message in capsys.readouterr().err, value
