"""The one place where mmrep changes torch and mmdeploy for an export.

mmdeploy imports the modules a deploy config lists in
``codebase_config.module`` before it exports; mmrep's deploy configs list this
module (``module=['mmrep.deploy.mmdeploy_setup']``), and importing it calls
:func:`setup_mmdeploy`. mmrep's own tools call :func:`setup_mmdeploy`
explicitly. Nothing else in :mod:`mmrep.deploy` changes the process: importing a
helper (``from mmrep.deploy.quantize import cpu_session``) patches nothing.

:func:`setup_mmdeploy` (idempotent):

* makes ``torch.onnx.export`` default to the TorchScript exporter again
  (torch>=2.9 defaults to the dynamo exporter, which never calls the symbolic
  functions and rewriters mmdeploy relies on; an explicit ``dynamo=`` wins);
* gives back ``torch.onnx.symbolic_opset9._cast_Long``, which torch removed and
  mmdeploy's RoIAlign symbolic (Mask R-CNN, Faster R-CNN) calls;
* wraps mmdeploy's ``BaseTask.build_pytorch_model`` so that mmdeploy's own
  conversion fuses every mmrep block, neck included
  (:mod:`mmrep.deploy.mmdeploy_fusion`);
* registers mmrep's exact ``adaptive_avg_pool2d`` export
  (:mod:`mmrep.deploy.rewriters`).
"""
import functools

import torch


def _make_torchscript_export_default() -> None:
    export = torch.onnx.export
    if getattr(export, '_mmrep_torchscript_default', False):
        return

    @functools.wraps(export)
    def export_torchscript_by_default(*args, **kwargs):
        kwargs.setdefault('dynamo', False)
        return export(*args, **kwargs)

    export_torchscript_by_default._mmrep_torchscript_default = True
    torch.onnx.export = export_torchscript_by_default


def _cast_long(g, input, non_blocking=False):
    """ONNX ``Cast(to=INT64)``: the removed ``symbolic_opset9._cast_Long``."""
    return g.op('Cast', input, to_i=torch.onnx.TensorProtoDataType.INT64)


def _restore_cast_long() -> None:
    import torch.onnx.symbolic_opset9 as opset9
    if not hasattr(opset9, '_cast_Long'):
        opset9._cast_Long = _cast_long


def setup_mmdeploy() -> bool:
    """Prepare torch and mmdeploy for exporting mmrep models; returns False without mmdeploy.

    The torch export fixes are applied either way (they serve any TorchScript export).
    """
    _make_torchscript_export_default()
    _restore_cast_long()
    from .mmdeploy_fusion import fuse_in_mmdeploy_tasks
    from .rewriters import register_rewriters
    if not fuse_in_mmdeploy_tasks():
        return False
    register_rewriters()
    return True


setup_mmdeploy()
