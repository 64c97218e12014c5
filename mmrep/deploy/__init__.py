"""Export of fused mmrep models through mmdeploy to ONNX / onnxruntime.

Importing this package (deploy configs list it in
``codebase_config.module``, which mmdeploy imports before exporting) makes
mmdeploy 1.3 work with every torch mmrep supports (:mod:`mmrep.compat`):

* ``torch.onnx.export`` defaults to the dynamo exporter on torch>=2.9, which
  never calls the TorchScript symbolic functions and rewriters mmdeploy relies
  on; we make ``dynamo=False`` the default again (an explicit ``dynamo=``
  wins). torch<2.5 has only the TorchScript exporter: nothing to do.
* ``torch.onnx.symbolic_opset9._cast_Long``, used by mmdeploy's RoIAlign
  symbolic (Mask R-CNN, Faster R-CNN), was removed; we provide it again.

It also makes mmdeploy's own conversion (``mmdeploy.apis.torch2onnx``, its
``tools/deploy.py``) fuse every mmrep block of the model, neck included,
before exporting (:mod:`mmrep.deploy.mmdeploy_fusion`).
"""
from mmrep import compat

compat.make_torchscript_onnx_export_default()
compat.restore_cast_long_symbolic()

from .mmdeploy_fusion import fuse_in_mmdeploy_tasks  # noqa: E402
fuse_in_mmdeploy_tasks()

from .graph_checks import check_onnx_graph, count_conv2d  # noqa: E402
from .compare import compare_detections, compare_instances, compare_segmentation  # noqa: E402
from .pipeline import ExportCheckError, export_and_verify  # noqa: E402
from . import rewriters  # noqa: E402,F401  (exact adaptive_avg_pool2d export)

__all__ = ['check_onnx_graph', 'count_conv2d', 'compare_detections', 'compare_instances',
           'fuse_in_mmdeploy_tasks',
           'compare_segmentation', 'export_and_verify', 'ExportCheckError']
