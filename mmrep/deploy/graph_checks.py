"""Checks that an exported ONNX graph really is the fused, plain network."""
from __future__ import annotations

from collections import Counter
from typing import Callable, Optional

import onnx
from torch import nn


def count_conv2d(model: nn.Module) -> int:
    """Number of ``nn.Conv2d`` modules (mmcv's ConvModule wraps one too)."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def count_conv2d_run(model: nn.Module, run: Callable[[], object]):
    """``run()``'s result and how many distinct ``nn.Conv2d`` of ``model`` it called.

    Inference skips some convs that training uses (mmseg's auxiliary head,
    for example), and an export holds only the convs inference runs.
    """
    called = set()
    handles = [m.register_forward_hook(lambda mod, args, out: called.add(id(mod)))
               for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        result = run()
    finally:
        for handle in handles:
            handle.remove()
    return result, len(called)


def _parallel_conv_adds(graph) -> list:
    """Add nodes summing two Conv nodes that read the same tensor.

    That is a multi-branch block left unfused (e.g. 3x3 + 1x1 branches of a
    RepVGG block): after re-parameterization they are one conv.
    """
    conv_input = {n.output[0]: n.input[0] for n in graph.node if n.op_type == 'Conv'}
    found = []
    for node in graph.node:
        if node.op_type == 'Add' and len(node.input) == 2:
            a, b = node.input
            if a in conv_input and b in conv_input and conv_input[a] == conv_input[b]:
                found.append(node.name or node.output[0])
    return found


def check_onnx_graph(onnx_path: str, fused_model: nn.Module,
                     conv2d_run: Optional[int] = None) -> dict:
    """Graph figures and their verdict (``ok``) for a fused model's export.

    * no ``BatchNormalization`` node may be left;
    * the Conv nodes use exactly as many distinct weights as the fused model
      has ``nn.Conv2d`` modules that inference runs (``conv2d_run``, see
      :func:`count_conv2d_run`; all of them when not given). Heads shared
      across pyramid levels run one weight several times, so nodes are
      counted by weight, not by call;
    * no Add sums parallel conv branches over one input.
    """
    graph = onnx.load(onnx_path).graph
    ops = Counter(n.op_type for n in graph.node)
    conv_weights = {n.input[1] for n in graph.node if n.op_type == 'Conv'}
    report = dict(
        bn_nodes=ops.get('BatchNormalization', 0),
        conv_nodes=ops.get('Conv', 0),
        conv_weights=len(conv_weights),
        torch_conv2d=count_conv2d(fused_model) if conv2d_run is None else conv2d_run,
        torch_conv2d_total=count_conv2d(fused_model),
        parallel_conv_adds=_parallel_conv_adds(graph),
        op_counts=dict(sorted(ops.items())))
    errors = []
    if report['bn_nodes']:
        errors.append(f"{report['bn_nodes']} BatchNormalization nodes left in the graph")
    if report['conv_weights'] != report['torch_conv2d']:
        errors.append(f"{report['conv_weights']} distinct Conv weights in the graph but "
                      f"{report['torch_conv2d']} nn.Conv2d that the fused model runs at inference")
    if report['parallel_conv_adds']:
        errors.append('Add of parallel conv branches left (unfused block): '
                      f"{report['parallel_conv_adds'][:5]}")
    report['errors'] = errors
    report['ok'] = not errors
    return report
