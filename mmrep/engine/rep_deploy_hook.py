"""RepDeployHook: fuse the model for testing, optionally validate the fused model, export at the end."""
from __future__ import annotations

import os.path as osp
import time
from typing import Optional, Tuple

import mmengine
import torch
from mmengine.dist import master_only
from mmengine.hooks import EMAHook, Hook

from mmrep.engine.deploy_utils import (fused_checkpoint_error, fused_config, read_meta,
                                       resolve_hook_type, save_fused)
from mmrep.engine.fast_path import to_fast_path
from mmrep.reparam import fused_eval_copy, reparameterize_model, unwrap_model


class RepDeployHook(Hook):
    """Fuses mmrep blocks where a plain network is wanted, never a model still training.

    * before testing, the model is fused in place (``tools/test.py`` evaluates
      the plain network); with an ``EMAHook`` the EMA weights are fused;
    * ``validate_fused=True``: after each validation a fused deep copy of the
      weights just validated (the EMA weights with an ``EMAHook``) is
      evaluated too, and ``fused/<metric>`` and ``fused/<metric>_diff`` are
      logged on the same line as the validation's own metrics;
    * at the end of training a fused checkpoint and a config that builds the
      plain network are written next to the last checkpoint this run saved
      (``<last>_fused.pth``, ``<config>_fused.py``); when this run saved no
      checkpoint of its final weights they go to the run's log dir as
      ``iter_<N>_fused.pth``. Both files or neither are written, and a
      failure is logged, never raised: a finished training run does not end
      in a crash from this hook.

    It also refuses a fused checkpoint loaded into the training form of the
    model (``load_from``, ``--resume``, stock mmdet/mmseg ``tools/test.py``
    with a training config): the keys do not fit, mmengine would only warn,
    and the fused half-random model would be evaluated.

    Args:
        fuse_before_test: fuse in ``before_test``.
        validate_fused: also evaluate a fused copy after each validation.
        save_fused: write the fused checkpoint and config after training.
        memory_format: layout of the fused model under test and in the fused
            validation: ``'auto'`` (the fastest correct one,
            :mod:`mmrep.engine.fast_path`), ``'channels_last'`` or ``'contiguous'``.
    """

    # Above EMAHook (NORMAL): after_val_epoch runs while the validated (EMA)
    # weights are still in the model; above LoggerHook (BELOW_NORMAL): the
    # fused metrics reach the log line of the validation they belong to.
    priority = 'ABOVE_NORMAL'

    def __init__(self, fuse_before_test: bool = True, validate_fused: bool = False,
                 save_fused: bool = True, memory_format: str = 'auto'):
        self.fuse_before_test = fuse_before_test
        self.memory_format = memory_format
        self.validate_fused = validate_fused
        self.save_fused = save_fused

    @staticmethod
    def _ema_hook(runner) -> Optional[EMAHook]:
        return next((h for h in runner.hooks if isinstance(h, EMAHook)), None)

    def _final_weights(self, runner) -> torch.nn.Module:
        """The weights a test would use: the EMA copy with an EMAHook (not swapped in here)."""
        ema = self._ema_hook(runner)
        return ema.ema_model.module if ema is not None else unwrap_model(runner.model)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # mmengine calls this before it loads the weights into the model
        name = getattr(runner, '_load_from', None) or 'the checkpoint'
        error = fused_checkpoint_error(runner.model, checkpoint, name)
        if error is not None:
            raise error

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
        model.eval()
        reparameterize_model(model, inplace=True)
        layout = to_fast_path(model, self.memory_format)
        runner.logger.info(f'RepDeployHook: model fused for testing ({layout})')

    def after_val_epoch(self, runner, metrics=None) -> None:
        if not self.validate_fused or not metrics:
            return
        # EMAHook swaps its weights back after this hook: the model holds what was validated.
        fused = fused_eval_copy(runner.model)
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

    def _source_checkpoint(self, runner) -> Tuple[Optional[str], Optional[dict]]:
        """The checkpoint this run saved of its final weights, with its meta; else (None, None).

        Read from CheckpointHook's record in the message hub, never from the
        work dir's ``last_checkpoint`` file, which an earlier run may have left.
        """
        last = runner.message_hub.get_info('last_ckpt')
        if not last or not osp.isfile(last):
            return None, None
        meta = read_meta(last)
        if meta.get('iter') != runner.iter:  # saved earlier: the model has trained since
            return None, None
        return last, meta

    @staticmethod
    def _runner_meta(runner) -> dict:
        """The meta mmengine's Runner.save_checkpoint would have written now."""
        meta = dict(epoch=runner.epoch, iter=runner.iter, seed=runner.seed,
                    experiment_name=runner.experiment_name,
                    time=time.strftime('%Y%m%d_%H%M%S', time.localtime()),
                    mmengine_version=mmengine.__version__)
        dataset = getattr(runner.train_dataloader, 'dataset', None)
        if getattr(dataset, 'metainfo', None) is not None:
            meta['dataset_meta'] = dataset.metainfo
        return meta

    @master_only
    def after_train(self, runner) -> None:
        if not self.save_fused:
            return
        try:
            self._write_fused(runner)
        except Exception as err:  # a finished training run must not end in a crash here
            runner.logger.warning(
                f'RepDeployHook: no fused checkpoint written ({type(err).__name__}: {err}). '
                'The training checkpoints are intact; fuse one offline with '
                'tools/reparameterize.py CONFIG CHECKPOINT OUT_DIR.')

    def _write_fused(self, runner) -> None:
        cfg = runner.cfg
        fused_config(cfg)  # no model config (Runner built from a model object) or nothing to fuse
        source, source_meta = self._source_checkpoint(runner)
        if source is not None:
            out_dir, stem = osp.dirname(source), osp.splitext(osp.basename(source))[0]
        else:
            # a new name in this run's own folder: nothing of an earlier run is overwritten
            out_dir, stem = runner.log_dir, f'iter_{runner.iter}'
            source_meta = self._runner_meta(runner)
        cfg_name = osp.splitext(osp.basename(cfg.filename or 'config.py'))[0]
        ckpt_path = osp.join(out_dir, f'{stem}_fused.pth')
        cfg_path = osp.join(out_dir, f'{cfg_name}_fused.py')
        save_fused(self._final_weights(runner), cfg, ckpt_path, cfg_path,
                   source_checkpoint=source, source_meta=source_meta, overwrite=True)
        runner.logger.info(f'RepDeployHook: wrote {ckpt_path} and {cfg_path}'
                           + ('' if source else ' (this run saved no checkpoint of its '
                              'final weights)'))


def is_rep_deploy_hook(hook_cfg) -> bool:
    """Does this ``custom_hooks`` entry build a RepDeployHook, however its type is spelled?

    ``'RepDeployHook'``, ``'mmdet.RepDeployHook'``, the class itself, or a subclass.
    """
    cls = resolve_hook_type(hook_cfg.get('type')) if isinstance(hook_cfg, dict) else None
    return isinstance(cls, type) and issubclass(cls, RepDeployHook)
