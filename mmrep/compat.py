"""Differences between the versions of torch, mmengine and mmcv that mmrep supports.

* ``torch.onnx.export``'s exporter choice, and ONNX symbolics a newer torch removed.
* Whether nncf (OpenVINO INT8) imports with this torch.

(Safe checkpoint loading, which lived here, is :mod:`mmrep.checkpoint`.)
"""
import functools
import inspect
from typing import Optional

import torch


# ---------------------------------------------------------------------------
# ONNX export: torch.onnx.export across torch versions
#
# mmdeploy 1.3 exports through the TorchScript-based exporter: it patches the
# model with rewriters and registers symbolic functions, which the dynamo
# exporter never calls. torch 2.5 gave torch.onnx.export a ``dynamo`` switch and
# torch 2.9 turned it on by default; torch 2.1-2.4 have only the TorchScript
# exporter and no such keyword (passing it is a TypeError there).


def onnx_export_has_dynamo_switch() -> bool:
    """Does this torch's ``torch.onnx.export`` take ``dynamo=``?"""
    return 'dynamo' in inspect.signature(torch.onnx.export).parameters


def torchscript_onnx_export_kwargs() -> dict:
    """The keywords that make ``torch.onnx.export`` use the TorchScript exporter on this torch."""
    return {'dynamo': False} if onnx_export_has_dynamo_switch() else {}


def make_torchscript_onnx_export_default() -> None:
    """Make ``torch.onnx.export`` default to ``dynamo=False`` again (an explicit ``dynamo=`` wins).

    Nothing to do on a torch whose exporter has no ``dynamo`` switch. Idempotent.
    """
    export = torch.onnx.export
    if getattr(export, '_mmrep_torchscript_default', False) or not onnx_export_has_dynamo_switch():
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


def restore_cast_long_symbolic() -> None:
    """Give back ``torch.onnx.symbolic_opset9._cast_Long`` where a newer torch removed it.

    mmdeploy 1.3's RoIAlign symbolic (Mask R-CNN, Faster R-CNN) calls it.
    """
    import torch.onnx.symbolic_opset9 as opset9
    if not hasattr(opset9, '_cast_Long'):
        opset9._cast_Long = _cast_long


# ---------------------------------------------------------------------------
# nncf: nncf 3.x maps its dtypes to torch.uint16 and friends, which torch 2.3 added; with
# an older torch (the classic stack's 2.1) ``import nncf`` raises AttributeError.


def nncf_unavailable() -> Optional[str]:
    """Why nncf cannot be used with this torch, or None when it imports."""
    import importlib.util
    if importlib.util.find_spec('nncf') is None:
        return 'nncf is not installed'
    try:
        import nncf  # noqa: F401
    except Exception as exc:  # AttributeError on torch < 2.3, not an ImportError
        return (f'nncf does not import with torch {torch.__version__} '
                f'({type(exc).__name__}: {exc}); nncf 3.x needs torch>=2.3')
    return None
