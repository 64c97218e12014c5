"""Export of fused mmrep models through mmdeploy to ONNX / onnxruntime.

Importing this package (deploy configs list it in
``codebase_config.module``, which mmdeploy imports before exporting) makes
mmdeploy 1.3 work with torch>=2.9:

* ``torch.onnx.export`` defaults to the dynamo exporter there, which never
  calls the TorchScript symbolic functions and rewriters mmdeploy relies on;
  we make ``dynamo=False`` the default again (an explicit ``dynamo=`` wins).
* ``torch.onnx.symbolic_opset9._cast_Long``, used by mmdeploy's RoIAlign
  symbolic (Mask R-CNN, Faster R-CNN), was removed; we provide it again.

It also makes mmdeploy's own conversion (``mmdeploy.apis.torch2onnx``, its
``tools/deploy.py``) fuse every mmrep block of the model, neck included,
before exporting (:mod:`mmrep.deploy.mmdeploy_fusion`).
"""
import functools

import torch
import torch.onnx.symbolic_opset9 as _opset9


def _patch_onnx_export() -> None:
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


_patch_onnx_export()
if not hasattr(_opset9, '_cast_Long'):
    _opset9._cast_Long = _cast_long

from .mmdeploy_fusion import fuse_in_mmdeploy_tasks  # noqa: E402
fuse_in_mmdeploy_tasks()

from .graph_checks import check_onnx_graph, count_conv2d  # noqa: E402
from .compare import compare_detections, compare_instances, compare_segmentation  # noqa: E402
from .pipeline import ExportCheckError, export_and_verify  # noqa: E402
from . import rewriters  # noqa: E402,F401  (exact adaptive_avg_pool2d export)

__all__ = ['check_onnx_graph', 'count_conv2d', 'compare_detections', 'compare_instances',
           'fuse_in_mmdeploy_tasks',
           'compare_segmentation', 'export_and_verify', 'ExportCheckError']
