"""tools/convert_weights.py on the checkpoints training scripts write, and on failed downloads.

- mmengine's Runner (mmpretrain): a MessageHub with HistoryBuffers inside, and
  with an EMAHook the two weight sets swapped: ``state_dict`` holds the EMA
  weights, ``ema_state_dict`` the raw ones. Made by a real Runner run here.
- the official RepVGG ``main.py``: ``model`` and ``ema`` (and its yacs config).
- an HTML page saved under the checkpoint's name.
"""
import os.path as osp

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn

import mmrep  # noqa: F401
from fusion_check import max_rel_diff
from mmrep.checkpoint import UntrustedCheckpointError
from mmrep.converters import convert_checkpoint, load_source
from mmrep.models.backbones.repvgg import RepVGG
from test_convert_weights import (assert_same_features, cli_main, image, mmpretrain_classifier,
                                  official_repvgg_state, pretrained, randomized)


class Classifier(BaseModel):
    """mmpretrain's RepVGG-A0 under ``backbone.`` and a linear head, trained by a Runner."""

    def __init__(self):
        super().__init__()
        self.backbone = mmpretrain_classifier('A0').backbone
        self.head = nn.Linear(1280, 3)

    def forward(self, inputs, labels=None, mode='tensor'):
        logits = self.head(self.backbone(torch.stack(inputs))[-1].mean((2, 3)))
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(logits, torch.tensor(labels)))
        return logits


@pytest.fixture(scope='module')
def ema_run(tmp_path_factory):
    """Three SGD steps with mmengine's EMAHook; the checkpoint and both weight sets."""
    work = str(tmp_path_factory.mktemp('ema_run'))
    torch.manual_seed(0)
    data = [dict(inputs=torch.randn(3, 32, 32), labels=i % 3) for i in range(6)]
    runner = Runner(
        model=Classifier(), work_dir=work, experiment_name='convert_ema_run',
        train_dataloader=dict(dataset=data, batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='pseudo_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        train_cfg=dict(by_epoch=False, max_iters=3),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=3, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[dict(type='EMAHook', momentum=0.5)], log_level='WARNING')
    runner.train()
    ema_hook = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook')
    x = image(32, 48)
    with torch.no_grad():
        raw = runner.model.eval().backbone(x)
        ema = ema_hook.ema_model.module.eval().backbone(x)
    assert max_rel_diff(raw, ema) > 0.05, 'the EMA weights should differ from the raw ones'
    return dict(ckpt=osp.join(work, 'iter_3.pth'), x=x, raw=raw, ema=ema)


def test_runner_checkpoint_loads_in_the_converter(ema_run):
    """Item 6: the converter loads a Runner checkpoint (HistoryBuffers) as every tool does."""
    from mmengine.logging import HistoryBuffer
    ckpt = load_source(ema_run['ckpt'])
    assert any(isinstance(v, HistoryBuffer) for v in ckpt['message_hub']['log_scalars'].values())


@pytest.mark.parametrize('ema', [True, False], ids=['--ema', 'raw'])
def test_mmengine_ema_checkpoint_converts_the_weights_asked_for(ema_run, tmp_path, ema):
    """Item 8: mmengine's EMAHook swaps the sets before saving; --ema must give the EMA weights,
    and no flag the raw ones (named in the report)."""
    out = tmp_path / 'a0.pth'
    argv = [ema_run['ckpt'], str(out), '--from', 'mmpretrain', '--arch', 'repvgg-a0']
    assert cli_main(argv + (['--ema'] if ema else [])) == 0
    ours = pretrained(RepVGG, out, arch='A0')
    with torch.no_grad():
        got = ours(ema_run['x'])
    want, other = (ema_run['ema'], ema_run['raw']) if ema else (ema_run['raw'], ema_run['ema'])
    assert_same_features(want, got)
    assert max_rel_diff(other, got) > 0.05
    notes = ' '.join(torch.load(out, weights_only=True)['meta']['notes'])
    assert ("EMA weights from 'state_dict'" in notes) if ema else \
        ("raw (non-EMA) weights from 'ema_state_dict'" in notes and '--ema' in notes)


class CfgNode(dict):
    """Stands in for the yacs CfgNode that the official main.py stores as 'config'."""


@pytest.fixture(scope='module')
def official_training_checkpoint(tmp_path_factory):
    """DingXiaoH/RepVGG main.py's save_checkpoint: model, optimizer, ..., config, ema."""
    raw, ema = (randomized(mmpretrain_classifier('A0'), seed=s) for s in (11, 12))
    path = tmp_path_factory.mktemp('official') / 'ckpt_epoch_119.pth'
    torch.save({'model': official_repvgg_state(raw), 'optimizer': {'state': {}, 'param_groups': []},
                'lr_scheduler': {'last_epoch': 119}, 'max_accuracy': 71.2, 'epoch': 119,
                'config': CfgNode(MODEL=CfgNode(ARCH='RepVGG-A0')),
                'ema': official_repvgg_state(ema)}, path)
    x = image()
    with torch.no_grad():
        return dict(path=str(path), x=x, raw=raw.backbone(x), ema=ema.backbone(x))


@pytest.mark.parametrize('ema', [True, False], ids=['--ema', 'raw'])
def test_official_repvgg_training_checkpoint_ema(official_training_checkpoint, tmp_path, ema):
    """Item 9: the official main.py saves the EMA weights as 'ema'."""
    src = official_training_checkpoint
    with pytest.raises(UntrustedCheckpointError, match=f'{__name__}.CfgNode'):
        load_source(src['path'])  # the yacs config is a Python object: an explicit opt-in
    report = convert_checkpoint(src['path'], str(tmp_path / 'a0.pth'), 'official', 'repvgg-a0',
                                ema=ema, unsafe=True)
    with torch.no_grad():
        got = pretrained(RepVGG, tmp_path / 'a0.pth', arch='A0')(src['x'])
    assert_same_features(src['ema'] if ema else src['raw'], got)
    notes = ' '.join(report['notes'])
    assert ("EMA weights from 'ema'" in notes) if ema else \
        ("'ema'" in notes and '--ema' in notes)  # the EMA weights are mentioned


def test_html_download_is_reported_as_not_a_checkpoint(tmp_path, capsys):
    """Item 7: a failed Google Drive download, with and without --unsafe-load."""
    src = tmp_path / 'RepVGG-A0-train.pth'
    src.write_text('<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning'
                   '</title></head><body>...</body></html>')
    for extra in ([], ['--unsafe-load']):
        assert cli_main([str(src), str(tmp_path / 'out.pth'), '--from', 'official',
                         '--arch', 'repvgg-a0'] + extra) == 1
        err = capsys.readouterr().err
        assert 'is an HTML page' in err and 'not a PyTorch checkpoint' in err
        assert 'check the download' in err and '--unsafe-load' not in err
        assert 'Traceback' not in err
    assert not (tmp_path / 'out.pth').exists()


LAYOUTS = {
    'mmengine': lambda s: {'meta': {'epoch': 1}, 'state_dict': s},
    'bare state dict': lambda s: s,
    'DeiT / official RepVGG': lambda s: {'model': s, 'epoch': 3},
    'DDP under state_dict': lambda s: {'state_dict': {f'module.{k}': v for k, v in s.items()}},
    'DDP under model': lambda s: {'model': {f'module.{k}': v for k, v in s.items()}},
}


@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_every_consumer_unwraps_a_checkpoint_the_same_way(layout, tmp_path):
    """Item 11: init_cfg Pretrained (read_state_dict), tools/test.py and the deploy tools
    (load_checked) and the converters (unwrap_checkpoint) share one unwrapper."""
    from mmrep.converters.common import unwrap_checkpoint
    from mmrep.engine.deploy_utils import load_checked
    from mmrep.pretrained_init import read_state_dict
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in model.state_dict().items()}
    path = str(tmp_path / 'ckpt.pth')
    torch.save(LAYOUTS[layout](state), path)
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    load_checked(fresh, path)
    unwrapped = {'read_state_dict': read_state_dict(path)[0], 'load_checked': fresh.state_dict(),
                 'unwrap_checkpoint': unwrap_checkpoint(torch.load(path, weights_only=True))[0]}
    for consumer, got in unwrapped.items():
        assert got.keys() == state.keys(), consumer
        assert all(torch.equal(got[k], state[k]) for k in state), consumer
