"""Make mmdeploy's own tools fuse every mmrep block before they export.

mmdeploy 1.3 builds the PyTorch model it converts (``torch2onnx``,
``torch2torchscript``, calibration, visualization, ``tools/deploy.py``) with
``BaseTask.build_pytorch_model``, which only calls
``model.backbone.switch_to_deploy()`` and ``model.switch_to_deploy()``. An mmrep
neck (RepPAFPN) or any block outside those two places would be exported in
its multi-branch training form. The mmdet and mmseg task processors inherit
that method, so wrapping it there is the one place that covers them: the
wrapped method fuses the whole model with :func:`mmrep.reparameterize_model`
right after mmdeploy has built it. A model without unfused mmrep blocks is
returned as it is.

Deploy configs import :mod:`mmrep.deploy.mmdeploy_setup` through
``codebase_config.module``; mmdeploy imports that in every process before it
builds a task processor, so the wrapper is in place when
``build_pytorch_model`` runs. Importing this module wraps nothing.
"""
from __future__ import annotations

import functools
import importlib.util

from mmengine.logging import print_log

from mmrep.reparam import count_unfused, reparameterize_model


def _fusing(build_pytorch_model):
    @functools.wraps(build_pytorch_model)
    def build_fused_pytorch_model(self, *args, **kwargs):
        model = build_pytorch_model(self, *args, **kwargs)
        unfused = count_unfused(model)
        if unfused:
            reparameterize_model(model, inplace=True)
            print_log(f'mmrep: fused {unfused} re-parameterizable blocks of the model '
                      'mmdeploy built', logger='current')
        return model

    build_fused_pytorch_model.fuses_mmrep_blocks = True
    return build_fused_pytorch_model


def fuse_in_mmdeploy_tasks() -> bool:
    """Wrap mmdeploy's ``BaseTask.build_pytorch_model`` to fuse; once only.

    Returns False (and changes nothing) when mmdeploy is not installed.
    """
    if importlib.util.find_spec('mmdeploy') is None:
        return False
    from mmdeploy.codebase.base.task import BaseTask
    if not getattr(BaseTask.build_pytorch_model, 'fuses_mmrep_blocks', False):
        BaseTask.build_pytorch_model = _fusing(BaseTask.build_pytorch_model)
    return True
