"""RepDeployHook: fuse the model for testing, optionally validate the fused model, export at the end."""
from __future__ import annotations

import copy
import os.path as osp
from typing import Optional

import torch
from mmengine.dist import master_only
from mmengine.hooks import EMAHook, Hook

from mmrep.engine.deploy_utils import save_fused
from mmrep.engine.fast_path import to_fast_path
from mmrep.reparam import reparameterize_model, unwrap_model


class RepDeployHook(Hook):
    """Fuses mmrep blocks where a plain network is wanted, never a model still training.

    * before testing, the model is fused in place (``tools/test.py`` evaluates
      the plain network); with an ``EMAHook`` the EMA weights are fused;
    * ``validate_fused=True``: after each validation a fused deep copy is
      evaluated too, and ``fused/<metric>`` and ``fused/<metric>_diff`` are logged;
    * at the end of training a fused checkpoint and a config that builds the
      plain network are written next to the last checkpoint.

    Args:
        fuse_before_test: fuse in ``before_test``.
        validate_fused: also evaluate a fused copy after each validation.
        save_fused: write ``<last>_fused.pth`` and ``<config>_fused.py`` after training.
        memory_format: layout of the fused model under test and in the fused
            validation: ``'auto'`` (the fastest correct one,
            :mod:`mmrep.engine.fast_path`), ``'channels_last'`` or ``'contiguous'``.
    """

    priority = 'LOW'  # after EMAHook has swapped its weights back

    def __init__(self, fuse_before_test: bool = True, validate_fused: bool = False,
                 save_fused: bool = True, memory_format: str = 'auto'):
        self.fuse_before_test = fuse_before_test
        self.memory_format = memory_format
        self.validate_fused = validate_fused
        self.save_fused = save_fused

    @staticmethod
    def _ema_hook(runner) -> Optional[EMAHook]:
        return next((h for h in runner.hooks if isinstance(h, EMAHook)), None)

    def _weights_to_fuse(self, runner) -> torch.nn.Module:
        ema = self._ema_hook(runner)
        return ema.ema_model.module if ema is not None else unwrap_model(runner.model)

    def before_test(self, runner) -> None:
        if not self.fuse_before_test:
            return
        model = unwrap_model(runner.model)
        ema = self._ema_hook(runner)
        if ema is not None:
            # Fused parameters no longer pair with the EMA copy: put the EMA weights
            # in now and stop EMAHook from swapping during this test.
            model.load_state_dict(ema.ema_model.module.state_dict())
            ema.before_test_epoch = ema.after_test_epoch = lambda *a, **k: None
        reparameterize_model(model, inplace=True)
        layout = to_fast_path(model, self.memory_format)
        runner.logger.info(f'RepDeployHook: model fused for testing ({layout})')

    def after_val_epoch(self, runner, metrics=None) -> None:
        if not self.validate_fused or not metrics:
            return
        fused = reparameterize_model(self._weights_to_fuse(runner)).eval()
        to_fast_path(fused, self.memory_format)
        loop = runner.val_loop
        with torch.no_grad():
            for data_batch in loop.dataloader:
                outputs = fused.val_step(data_batch)
                loop.evaluator.process(data_samples=outputs, data_batch=data_batch)
        fused_metrics = loop.evaluator.evaluate(len(loop.dataloader.dataset))
        for key, value in fused_metrics.items():
            if isinstance(value, (int, float)):
                runner.message_hub.update_scalar(f'val/fused/{key}', value)
                if isinstance(metrics.get(key), (int, float)):
                    runner.message_hub.update_scalar(f'val/fused/{key}_diff', value - metrics[key])
        runner.logger.info(f'RepDeployHook: fused model metrics {fused_metrics}')

    @master_only
    def after_train(self, runner) -> None:
        if not self.save_fused:
            return
        last = osp.join(runner.work_dir, 'last_checkpoint')
        if osp.isfile(last):
            with open(last) as f:
                ckpt = f.read().strip()
        else:
            ckpt = osp.join(runner.work_dir, 'final.pth')
        stem = osp.splitext(osp.basename(ckpt))[0]
        out_dir = osp.dirname(ckpt) or runner.work_dir
        cfg_name = osp.splitext(osp.basename(runner.cfg.filename or 'config.py'))[0]
        ckpt_path = osp.join(out_dir, f'{stem}_fused.pth')
        cfg_path = osp.join(out_dir, f'{cfg_name}_fused.py')
        save_fused(self._weights_to_fuse(runner), copy.deepcopy(runner.cfg), ckpt_path, cfg_path,
                   meta=dict(source_checkpoint=ckpt), overwrite=True)
        runner.logger.info(f'RepDeployHook: wrote {ckpt_path} and {cfg_path}')
