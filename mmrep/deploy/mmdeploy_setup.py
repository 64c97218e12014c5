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
  functions and rewriters mmdeploy relies on; an explicit ``dynamo=`` wins),
  and gives back ``torch.onnx.symbolic_opset9._cast_Long``, which newer torch
  removed and mmdeploy's RoIAlign symbolic calls: both through
  :mod:`mmrep.compat`, which knows which torch needs them;
* wraps mmdeploy's ``BaseTask.build_pytorch_model`` so that mmdeploy's own
  conversion fuses every mmrep block, neck included
  (:mod:`mmrep.deploy.mmdeploy_fusion`);
* registers mmrep's exact ``adaptive_avg_pool2d`` export
  (:mod:`mmrep.deploy.rewriters`).
"""
from mmrep import compat


def setup_mmdeploy() -> bool:
    """Prepare torch and mmdeploy for exporting mmrep models; returns False without mmdeploy.

    The torch export fixes are applied either way (they serve any TorchScript export).
    """
    compat.make_torchscript_onnx_export_default()
    compat.restore_cast_long_symbolic()
    from .mmdeploy_fusion import fuse_in_mmdeploy_tasks
    from .rewriters import register_rewriters
    if not fuse_in_mmdeploy_tasks():
        return False
    register_rewriters()
    return True


setup_mmdeploy()
