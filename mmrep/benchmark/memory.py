"""Peak memory of one path, measured under the same conditions for every row.

Rows measured one after the other in one process do not start equal: the
first row of a model pays one-time costs (libraries' lazy initialisation,
thread pools, allocator arenas) and later rows reuse memory earlier rows
freed, so the same row read 39.7, 7.4 and 7.4 MB depending on its place. Here
each row runs in a fresh Python process (:func:`peak_mb_isolated`) that

1. builds the model and its path's runner (ONNX files come from the parent,
   so no export runs in the child);
2. runs a tiny network once on the same runtime (one-time library costs);
3. measures :class:`~mmrep.engine.measure.PeakRSS` around the path's first
   call and ``calls`` more: its working memory (activations, workspaces,
   caches, arena growth), not the weights already loaded.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, Optional, Sequence

import torch

from mmrep.engine.measure import PeakRSS

from .models import Case, ModelSpec, build_case
from .runtimes import ONNXRUNTIME_PATHS, OPENVINO_PATHS, PathBuilder

DEFAULT_CALLS = 3


def _tiny_onnx(path: str) -> str:
    """A one-conv ONNX model, for the runtime's one-time costs."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), 'w')
    graph = helper.make_graph(
        [helper.make_node('Conv', ['x', 'w'], ['y'], pads=[1, 1, 1, 1])], 'tiny',
        [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 4, 16, 16])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    onnx.save(model, path)
    return path


def warm_runtime(path: str, threads: int, work_dir: str) -> None:
    """One inference of a tiny network on ``path``'s runtime (one-time costs)."""
    import numpy as np
    if path in ONNXRUNTIME_PATHS:
        from mmrep.deploy.quantize import cpu_session
        session = cpu_session(_tiny_onnx(os.path.join(work_dir, 'tiny.onnx')), threads)
        session.run(None, {'x': np.ones((1, 3, 16, 16), np.float32)})
    elif path in OPENVINO_PATHS:
        from . import openvino_paths
        compiled, _ = openvino_paths.compile(_tiny_onnx(os.path.join(work_dir, 'tiny.onnx')),
                                             threads)
        compiled([np.ones((1, 3, 16, 16), np.float32)])
    else:
        conv = torch.nn.Conv2d(3, 4, 3, padding=1).eval()
        x = torch.ones(1, 3, 16, 16)
        if 'channels_last' in path:
            conv, x = (t.to(memory_format=torch.channels_last) for t in (conv, x))
        with torch.no_grad():
            torch.relu(conv(x))


def measure_in_this_process(case: Case, path: str, threads: int, work_dir: str,
                            artifacts: Optional[Dict[str, str]] = None,
                            calls: int = DEFAULT_CALLS) -> Optional[float]:
    """Build ``path``'s runner, warm the runtime, and return the peak RSS growth (MB)."""
    runner = PathBuilder(case, threads, work_dir, artifacts).runner(path)
    warm_runtime(path, threads, work_dir)
    with torch.no_grad(), PeakRSS() as peak:
        for _ in range(1 + calls):
            runner.call()
    return None if peak.mb is None else round(peak.mb, 1)


def peak_mb_isolated(spec: ModelSpec, path: str, batch: int, input_shapes: Sequence[Sequence[int]],
                     threads: int, size: Sequence[int], artifacts: Optional[Dict[str, str]] = None,
                     calls: int = DEFAULT_CALLS, timeout: float = 1800) -> Dict[str, object]:
    """``{'peak_mb': MB}`` of ``path`` measured in a fresh process, or ``{'peak_error': why}``."""
    request = dict(spec=spec.as_dict(), path=path, batch=batch,
                   input_shapes=[list(s) for s in input_shapes], threads=threads,
                   size=list(size), artifacts=artifacts or {}, calls=calls)
    with tempfile.TemporaryDirectory(prefix='mmrep_memory_') as tmp:
        request_path = os.path.join(tmp, 'request.json')
        with open(request_path, 'w') as f:
            json.dump(request, f)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        proc = subprocess.run([sys.executable, '-m', 'mmrep.benchmark.memory', request_path],
                              capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=os.getcwd())
        result_path = request_path + '.out'
        if proc.returncode != 0 or not os.path.isfile(result_path):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return dict(peak_error=' | '.join(tail)[:300] or f'exit code {proc.returncode}')
        with open(result_path) as f:
            return json.load(f)


def _child(request_path: str) -> None:
    with open(request_path) as f:
        request = json.load(f)
    threads = request['threads']
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    spec = ModelSpec.from_dict(request['spec'])
    shapes = [tuple(s) for s in request['input_shapes']]
    case = build_case(spec, request['batch'], request['size'],
                      input_size=shapes[0][2:] if spec.kind in ('detector', 'segmentor') else None)
    # the parent's inputs had these shapes; values do not change memory
    case.inputs = tuple(torch.rand(s) for s in shapes)
    work_dir = os.path.dirname(request_path)
    mb = measure_in_this_process(case, request['path'], threads, work_dir,
                                 request['artifacts'], request['calls'])
    with open(request_path + '.out', 'w') as f:
        json.dump(dict(peak_mb=mb), f)


if __name__ == '__main__':
    _child(sys.argv[1])
