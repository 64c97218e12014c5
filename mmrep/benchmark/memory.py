"""Memory of one path, measured under the same conditions for every row.

Rows measured one after the other in one process do not start equal: the
first row of a model pays one-time costs (libraries' lazy initialisation,
thread pools, allocator arenas) and later rows reuse memory earlier rows
freed, so the same row read 39.7, 7.4 and 7.4 MB depending on its place. Here
each row runs in a fresh Python process (:func:`memory_isolated`) that

1. imports the libraries, runs a tiny network once on the path's runtime and,
   for torch paths, builds the model once and drops it (one-time costs:
   imports, registries, thread pools), then notes its settled RSS;
2. prepares the path alone (builds and fuses the model in place for torch
   paths; reads and compiles the parent's ONNX/IR file for onnxruntime and
   OpenVINO, without building a torch model): ``resident_mb`` is the settled
   RSS growth, the weights in the runtime's own format plus whatever the runtime
   allocates ahead (OpenVINO allocates its activation buffers when compiling);
3. measures :class:`~mmrep.engine.measure.PeakRSS` around the first call and
   ``calls`` more: ``peak_mb``, the working memory of inference (activations,
   workspaces, caches, arena growth) on top of ``resident_mb``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, Optional, Sequence

import torch

from mmrep.engine.measure import PeakRSS, settled_rss_mb

from .models import WHOLE_MODEL_KINDS, Case, ModelSpec, build_case
from .runtimes import ONNXRUNTIME_PATHS, OPENVINO_PATHS, TORCH_PATHS, PathBuilder

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
        from mmrep.deploy.openvino import compile_onnx
        model = compile_onnx(_tiny_onnx(os.path.join(work_dir, 'tiny.onnx')), None, threads)
        model({'x': np.ones((1, 3, 16, 16), np.float32)})
    else:
        conv = torch.nn.Conv2d(3, 4, 3, padding=1).eval()
        x = torch.ones(1, 3, 16, 16)
        if 'channels_last' in path:
            conv, x = (t.to(memory_format=torch.channels_last) for t in (conv, x))
        with torch.no_grad():
            torch.relu(conv(x))


def measure_in_this_process(spec: ModelSpec, path: str, batch: int,
                            input_shapes: Sequence[Sequence[int]], threads: int,
                            size: Sequence[int], work_dir: str,
                            artifacts: Optional[Dict[str, str]] = None,
                            calls: int = DEFAULT_CALLS) -> Dict[str, Optional[float]]:
    """``{'resident_mb', 'peak_mb'}`` of ``path`` (see the module docstring).

    Meant for a fresh process: everything else in this process counts too.
    """
    inputs = tuple(torch.rand(tuple(s)) for s in input_shapes)
    warm_runtime(path, threads, work_dir)
    whole = spec.kind in WHOLE_MODEL_KINDS

    def build():
        return build_case(spec, batch, size, input_size=inputs[0].shape[2:] if whole else None)

    if path in TORCH_PATHS:
        build()  # thrown away: the imports and registries' lazy loading it triggers stay
    before = settled_rss_mb()
    if path in TORCH_PATHS:
        case = build()
        case.inputs = inputs  # the parent's shapes; values do not change memory
    else:  # the runtime reads the parent's file: no torch model
        case = Case(spec, None, inputs, [], '', fuse=None)
    builder = PathBuilder(case, threads, work_dir, artifacts, in_place=True)
    runner = builder.runner(path)
    del builder, case
    ready = settled_rss_mb()
    with torch.no_grad(), PeakRSS() as peak:
        for _ in range(1 + calls):
            runner.call()
    resident = None if before is None or ready is None else round(ready - before, 1)
    return dict(resident_mb=resident, peak_mb=None if peak.mb is None else round(peak.mb, 1))


def memory_isolated(spec: ModelSpec, path: str, batch: int,
                    input_shapes: Sequence[Sequence[int]], threads: int, size: Sequence[int],
                    artifacts: Optional[Dict[str, str]] = None, calls: int = DEFAULT_CALLS,
                    timeout: float = 1800) -> Dict[str, object]:
    """``{'resident_mb', 'peak_mb'}`` of ``path`` measured in a fresh process, or
    ``{'memory_error': why}``."""
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
            return dict(memory_error=' | '.join(tail)[:300] or f'exit code {proc.returncode}')
        with open(result_path) as f:
            return json.load(f)


def _child(request_path: str) -> None:
    with open(request_path) as f:
        request = json.load(f)
    torch.set_num_threads(request['threads'])
    torch.set_flush_denormal(True)
    result = measure_in_this_process(
        ModelSpec.from_dict(request['spec']), request['path'], request['batch'],
        request['input_shapes'], request['threads'], request['size'],
        os.path.dirname(request_path), request['artifacts'], request['calls'])
    with open(request_path + '.out', 'w') as f:
        json.dump(result, f)


if __name__ == '__main__':
    _child(sys.argv[1])
