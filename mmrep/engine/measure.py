"""CPU latency and peak-memory measurement shared by the fast path and the benchmarks.

Peak memory: torch's CPU tensors come from ``malloc`` (no caching allocator)
and onnxruntime's from its own arena, so neither ``tracemalloc`` nor
``torch.cuda`` counters see them. We measure what the operating system sees:
the process's resident set size (RSS). :class:`PeakRSS` returns free heap
pages to the system (``malloc_trim``), resets the kernel's high-water mark
(``/proc/self/clear_refs``, Linux) and reports the peak RSS reached inside
the ``with`` block minus the RSS at its start: the working memory of what
runs inside (activations, workspaces, caches, an arena's growth), not the
weights already loaded.
"""
from __future__ import annotations

import ctypes
import gc
import statistics
import time
from typing import Any, Callable, List, Optional


def _status_kb(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _reset_high_water_mark() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def settled_rss_mb() -> Optional[float]:
    """The process's RSS in MB after garbage collection and returning free heap pages."""
    gc.collect()
    _malloc_trim()
    kb = _status_kb('VmRSS')
    return None if kb is None else kb / 1024


class PeakRSS:
    """``with PeakRSS() as peak: ...``; then ``peak.mb`` (None where it cannot be measured)."""

    def __enter__(self) -> 'PeakRSS':
        start_mb = settled_rss_mb()
        self._valid = _reset_high_water_mark()
        self._start_kb = None if start_mb is None else start_mb * 1024
        self.mb = None
        return self

    def __exit__(self, *exc) -> None:
        peak_kb = _status_kb('VmHWM')
        if self._valid and peak_kb is not None and self._start_kb is not None:
            self.mb = max(peak_kb - self._start_kb, 0) / 1024


def time_ms(run: Callable[[], Any], repeats: int, warmup: int = 1,
            max_seconds: Optional[float] = None) -> List[float]:
    """Wall-clock milliseconds of ``repeats`` calls of ``run()`` after ``warmup`` calls.

    With ``max_seconds``, fewer repeats (at least 3) are made when the warm-up
    call shows that ``repeats`` would take longer.
    """
    first = None
    for _ in range(warmup):
        start = time.perf_counter()
        run()
        first = time.perf_counter() - start
    if max_seconds is not None and first:
        repeats = max(3, min(repeats, int(max_seconds / first)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return times


def median_ms(run: Callable[[], Any], repeats: int = 3) -> float:
    """Median wall-clock milliseconds of ``run()`` after one warm-up call."""
    return statistics.median(time_ms(run, repeats))
