"""CPU benchmark of fused models: interleaved timing, paired verdicts, plain limits, memory.

``tools/benchmark.py`` is its command line; ``benchmarks/`` holds the
project's runs and targets. Modules:

* :mod:`~mmrep.benchmark.stats`: paired ratios, intervals, met / not met / inconclusive;
* :mod:`~mmrep.benchmark.timing`: the interleaved timing loop;
* :mod:`~mmrep.benchmark.limit`: :class:`PlainLimit`, the fused model's convs only;
* :mod:`~mmrep.benchmark.models`: the table of models and how they are built;
* :mod:`~mmrep.benchmark.runtimes`: the paths (torch, onnxruntime, OpenVINO);
* :mod:`~mmrep.benchmark.memory`: peak memory, one fresh process per row;
* :mod:`~mmrep.benchmark.run` and :mod:`~mmrep.benchmark.report`: running and reporting.
"""
