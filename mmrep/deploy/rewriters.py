"""An exact ONNX export of ``adaptive_avg_pool2d`` (UPerNet's and PSPNet's pyramid pooling).

mmdeploy 1.3 exports ``F.adaptive_avg_pool2d(x, s)`` as ``avg_pool2d`` with
kernel = stride = ``int(H / s)``. That equals adaptive pooling only when ``s``
divides the feature size: for UPerNet-RepVGG-A0 on CamVid (480x360 input,
15x12 last feature, pool scales 1/2/3/6) the exported logits differed from
PyTorch by 9% of their scale, and 4% of the pixels changed class. For a static
shape we export the exact operation instead: adaptive average pooling averages
the rectangle ``[floor(i H / s), ceil((i + 1) H / s))`` x (the same along W),
which is separable, so ``out = P_h @ x @ P_w^T`` with constant averaging
matrices (two MatMuls in ONNX). Divisible sizes keep mmdeploy's AvgPool.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair


def adaptive_pool_matrix(size: int, out: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``(out, size)`` matrix whose row ``i`` averages adaptive pooling's bin ``i``."""
    matrix = torch.zeros(out, size, dtype=dtype, device=device)
    for i in range(out):
        start, end = (i * size) // out, math.ceil((i + 1) * size / out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def exact_adaptive_avg_pool2d(x: torch.Tensor, output_size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` for a fixed input size, written with AvgPool or MatMuls."""
    height, width = int(x.shape[-2]), int(x.shape[-1])
    out_h, out_w = (o if o is not None else s
                    for o, s in zip(_pair(output_size), (height, width)))
    if height % out_h == 0 and width % out_w == 0:
        kernel = (height // out_h, width // out_w)
        return F.avg_pool2d(x, kernel, stride=kernel)
    rows = adaptive_pool_matrix(height, out_h, x.dtype, x.device)
    cols = adaptive_pool_matrix(width, out_w, x.dtype, x.device)
    return torch.matmul(torch.matmul(rows, x), cols.t())


_registered = False


def register_rewriters() -> bool:
    """Register the exact export with mmdeploy (onnxruntime backend); once. False without mmdeploy.

    Called by :func:`mmrep.deploy.mmdeploy_setup.setup_mmdeploy`, not at import:
    importing :func:`exact_adaptive_avg_pool2d` must not change mmdeploy.
    """
    global _registered
    if _registered:
        return True
    try:
        from mmdeploy.core import FUNCTION_REWRITER
        from mmdeploy.pytorch.functions.adaptive_pool import adaptive_avg_pool2d__default
        from mmdeploy.utils import is_dynamic_shape
    except ImportError:  # mmdeploy is an optional (deploy) dependency
        return False

    @FUNCTION_REWRITER.register_rewriter(
        func_name='torch.nn.functional.adaptive_avg_pool2d', backend='onnxruntime')
    def adaptive_avg_pool2d__onnxruntime_exact(input, output_size):
        """Exact for static shapes; dynamic shapes keep mmdeploy's approximation."""
        ctx = FUNCTION_REWRITER.get_context()
        if is_dynamic_shape(ctx.cfg):
            return adaptive_avg_pool2d__default(input, output_size)
        return exact_adaptive_avg_pool2d(input, output_size)

    _registered = True
    return True
