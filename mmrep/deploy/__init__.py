"""Export of fused mmrep models through mmdeploy to ONNX, run in onnxruntime or OpenVINO.

Importing this package or any of its helpers changes nothing in the process.
The changes an mmdeploy export needs (torch>=2.9 exporter default, mmdeploy's
fusion wrapper, rewriters) live in :mod:`mmrep.deploy.mmdeploy_setup`: deploy
configs import it through ``codebase_config.module`` and the tools call
:func:`~mmrep.deploy.mmdeploy_setup.setup_mmdeploy`.
"""
from .compare import compare_detections, compare_instances, compare_segmentation
from .graph_checks import check_onnx_graph, count_conv2d
from .mmdeploy_fusion import fuse_in_mmdeploy_tasks
from .pipeline import ExportCheckError, export_and_verify

__all__ = ['check_onnx_graph', 'count_conv2d', 'compare_detections', 'compare_instances',
           'fuse_in_mmdeploy_tasks', 'compare_segmentation', 'export_and_verify',
           'ExportCheckError']
