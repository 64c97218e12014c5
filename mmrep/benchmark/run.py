"""Run the benchmark: each model with its peers as one interleaved group, rows as dicts.

Every group (a model at one batch size, all its paths, and its peers' paths)
is timed with :func:`~mmrep.benchmark.timing.interleaved`, so any two rows of
a group give paired ratios (:func:`mmrep.benchmark.report.paired`). Each
row keeps its per-round samples (``samples_ms``) for that.
"""
from __future__ import annotations

import datetime
import json
import os
import os.path as osp
import platform
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import timing
from .memory import memory_isolated
from .models import MODEL_SPECS, WHOLE_MODEL_KINDS, Case, ModelSpec, build_case, get_spec
from .runtimes import ALL_PATHS, PEER_PATHS, PathBuilder, PathRunner, build_runners
from .stats import median_interval

DEFAULT_THREADS = 1


@dataclass
class Options:
    paths: Sequence[str] = ALL_PATHS
    batches: Sequence[int] = (1,)
    size: Tuple[int, int] = (224, 224)
    input_size: Optional[Tuple[int, int]] = None
    image_size: Optional[Tuple[int, int]] = None
    threads: int = DEFAULT_THREADS
    rounds: int = timing.DEFAULT_ROUNDS
    min_rounds: int = timing.MIN_ROUNDS
    max_seconds: Optional[float] = 120.0
    min_sample_ms: float = timing.DEFAULT_MIN_SAMPLE_MS
    memory: bool = True
    peers: bool = True
    work_dir: Optional[str] = None

    def __post_init__(self):
        unknown = [p for p in self.paths if p not in ALL_PATHS]
        if unknown:
            raise ValueError(f'unknown path(s) {unknown}; choose from {list(ALL_PATHS)}')
        if self.threads < 1:
            raise ValueError(f'threads must be at least 1, got {self.threads}')
        if any(b < 1 for b in self.batches):
            raise ValueError(f'batch sizes must be at least 1, got {list(self.batches)}')


def load_warning(load_1min: float, cpus: int, threads: int,
                 own: float = 0.0) -> Optional[str]:
    """A warning when other processes leave fewer idle cores than the run's threads.

    ``own``: how much of the load average is this run itself (0 before it
    starts; ``threads`` while it times, which keeps ``threads`` cores busy).
    """
    others = max(load_1min - own, 0.0)
    idle = cpus - others
    if idle >= threads:
        return None
    return (f'load average {load_1min:.2f} on {cpus} CPUs: other processes leave about '
            f'{max(idle, 0):.1f} idle for the {threads} thread(s) this run uses, so the '
            'times are inflated and noisy, and verdicts are more often inconclusive. '
            'Measure on an idle machine, or with fewer --threads.')


def machine() -> dict:
    import onnxruntime
    info = dict(torch=torch.__version__, onnxruntime=onnxruntime.__version__,
                cpus=os.cpu_count(), processor=platform.processor() or platform.machine(),
                python=platform.python_version())
    try:
        import openvino
        info['openvino'] = openvino.__version__
    except ImportError:
        pass
    return info


def _group_paths(spec: ModelSpec, paths: Sequence[str]) -> List[str]:
    if spec.reference or spec.kind == 'timm':
        return [p for p in paths if p in PEER_PATHS]
    return list(paths)


def _row_base(case: Case, batch: int, threads: int, group: str) -> dict:
    spec = case.spec
    base = dict(model=spec.name, kind=spec.kind, batch=batch,
                input=list(case.inputs[0].shape), image=case.image, input_from=case.input_from,
                threads=threads, flush_denormal=True, group=group)
    if spec.timm:
        base['timm_model'] = spec.timm
    if spec.reference:
        base['reference'] = True
    if case.notes:
        base['notes'] = list(case.notes)
    return base


def _timing_fields(samples: timing.Samples) -> dict:
    low, high, coverage = median_interval(samples.ms)
    return dict(median_ms=round(statistics.median(samples.ms), 3),
                min_ms=round(min(samples.ms), 3), ci_ms=[round(low, 3), round(high, 3)],
                ci_coverage=round(coverage, 3), rounds=len(samples.ms),
                calls_per_sample=samples.calls,
                samples_ms=[round(v, 4) for v in samples.ms])


def run_group(spec: ModelSpec, batch: int, options: Options, work_dir: str,
              specs: Dict[str, ModelSpec] = MODEL_SPECS,
              log: Callable[[str], None] = print) -> List[dict]:
    """Time ``spec`` and its peers, all paths interleaved; one row per (model, path)."""
    case = build_case(spec, batch, options.size, options.input_size, options.image_size)
    input_hw = tuple(case.inputs[0].shape[2:])
    shown = ('features of ' + 'x'.join(map(str, case.image)) if spec.kind == 'neck'
             else 'x'.join(map(str, input_hw)))
    group = f'{spec.name}, batch {batch}, {options.threads} thread(s), {shown}'
    members = [(case, _group_paths(spec, options.paths))]
    rows, runners, builders = [], {}, []
    if options.peers:
        for name in spec.peers:
            peer = get_spec(name, specs)
            peer_input = input_hw if peer.kind in WHOLE_MODEL_KINDS else None
            try:
                members.append((build_case(peer, batch, options.size, peer_input),
                                _group_paths(peer, options.paths)))
            except Exception as error:  # a missing peer (e.g. timm not installed) is a row
                why = (f'{type(error).__name__}: {error}'
                       + (' (pip install timm for the twin rows)'
                          if isinstance(error, ImportError) else ''))
                rows.append(dict(model=peer.name, kind=peer.kind, batch=batch,
                                 input=list(case.inputs[0].shape), threads=options.threads,
                                 group=group, path='all', error=why[:500]))
    for member, paths in members:
        builder = PathBuilder(member, options.threads, work_dir)
        builders.append(builder)
        base = _row_base(member, batch, options.threads, group)
        for path, runner in build_runners(builder, paths).items():
            row = dict(base, path=path)
            if isinstance(runner, PathRunner):
                row.update(runner.info)
                runners[(member.spec.name, path)] = (runner, row, builder)
            else:
                row['error'] = runner
            rows.append(row)
        if builder.nothing_to_fuse:
            base_note = f'{member.spec.name} has no re-parameterizable block: fused = unfused'
            for row in rows:
                if row['model'] == member.spec.name:
                    row.setdefault('notes', []).append(base_note)
    if runners:
        log(f'{group}: timing {len(runners)} runners interleaved')
        with torch.no_grad():
            samples = timing.interleaved(
                {key: value[0].call for key, value in runners.items()}, options.rounds,
                min_sample_ms=options.min_sample_ms, max_seconds=options.max_seconds,
                min_rounds=options.min_rounds)
        # the 1-minute load average just after timing: mostly the timing itself
        load = os.getloadavg()[0]
        warning = load_warning(load, os.cpu_count() or 1, options.threads, own=options.threads)
        if warning:
            log(f'WARNING: {group}: {warning}')
        for key, (runner, row, builder) in runners.items():
            row.update(_timing_fields(samples[key]), load_1min=round(load, 2))
            if warning:
                row['load_warning'] = True
    if options.memory:
        for key, (runner, row, builder) in runners.items():
            row.update(memory_isolated(builder.case.spec, key[1], batch,
                                       [t.shape for t in builder.case.inputs],
                                       options.threads, options.size, builder.artifacts))
    for row in rows:
        log(format_row(row))
    return rows


def format_row(row: dict) -> str:
    head = f"  {row['model']:34} b{row['batch']} {row['path']:26}"
    if 'error' in row:
        return f"{head} FAILED: {row['error'][:200]}"
    if 'median_ms' not in row:
        return f'{head} not timed'
    low, high = row['ci_ms']
    text = f"{head} {row['median_ms']:10.2f} ms [{low:.2f}, {high:.2f}]"
    if 'memory_error' in row:
        return f"{text}  memory FAILED: {row['memory_error']}"
    if 'peak_mb' in row:
        text += f"  resident {row.get('resident_mb')} MB + peak {row['peak_mb']} MB"
    return text


def row_key(row: dict) -> tuple:
    return (row['model'], row['path'], row['batch'], tuple(row['input']), row.get('threads'))


def merge_rows(previous: List[dict], new: List[dict]) -> List[dict]:
    """``previous`` with the rows ``new`` re-measures replaced (same model, path, batch,
    input and threads), then ``new``."""
    keys = {row_key(r) for r in new}
    return [r for r in previous if row_key(r) not in keys] + list(new)


def run(specs_to_run: Sequence[ModelSpec], options: Options,
        specs: Dict[str, ModelSpec] = MODEL_SPECS,
        log: Callable[[str], None] = print,
        on_group: Optional[Callable[[List[dict]], None]] = None) -> Tuple[List[dict], dict]:
    """Time every spec at every batch size; ``(rows, run record)``."""
    torch.set_num_threads(options.threads)
    # random weights without normalization (the plain limit's conv chain) decay into
    # denormal floats, which x86 computes many times slower: flush them to zero
    torch.set_flush_denormal(True)
    load_before = os.getloadavg()
    record = dict(date_utc=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M'),
                  threads=options.threads, load_before=[round(v, 2) for v in load_before],
                  warnings=[], **machine())
    warning = load_warning(load_before[0], os.cpu_count() or 1, options.threads)
    log(f"torch {record['torch']}, onnxruntime {record['onnxruntime']}, "
        f"{options.threads} thread(s) (--threads), {record['cpus']} CPUs, "
        f'load average {load_before[0]:.2f}')
    if warning:
        record['warnings'].append(warning)
    work_dir = options.work_dir or tempfile.mkdtemp(prefix='mmrep_benchmark_')
    rows: List[dict] = []
    try:
        for batch in options.batches:
            for spec in specs_to_run:
                group_rows = run_group(spec, batch, options, work_dir, specs, log)
                rows += group_rows
                if any(r.get('load_warning') for r in group_rows):
                    load = max(r['load_1min'] for r in group_rows if 'load_1min' in r)
                    record['warnings'].append(f'{spec.name} b{batch}: ' + load_warning(
                        load, os.cpu_count() or 1, options.threads, own=options.threads))
                if on_group is not None:
                    on_group(rows)
    finally:
        if options.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    record['load_after'] = [round(v, 2) for v in os.getloadavg()]
    record['warnings'] = list(dict.fromkeys(record['warnings']))
    return rows, record


class OutputError(RuntimeError):
    """The output directory holds a run that would be lost or cannot be added to."""


class RunFiles:
    """``OUT/benchmark.json`` (runs and rows), ``benchmark.md`` and ``benchmark.png``.

    An existing ``benchmark.json`` is never replaced silently: ``append`` adds
    this run to it (rows of the same model, path, batch, input and threads are
    replaced), ``overwrite`` replaces it; neither raises :class:`OutputError`.
    """

    def __init__(self, out_dir: str, command: str, append: bool = False,
                 overwrite: bool = False):
        if append and overwrite:
            raise OutputError('append and overwrite exclude each other')
        self.out_dir, self.command = out_dir, command
        self.json_path = osp.join(out_dir, 'benchmark.json')
        self.previous = dict(runs=[], rows=[])
        if osp.isfile(self.json_path):
            if not (append or overwrite):
                raise OutputError(f'{self.json_path} exists: --append to add to it, '
                                  '--overwrite to replace it, or choose another --out')
            if append:
                with open(self.json_path) as f:
                    self.previous = json.load(f)
                if not isinstance(self.previous, dict) or 'rows' not in self.previous:
                    raise OutputError(f'{self.json_path} was written by an older '
                                      'tools/benchmark.py (no per-round samples): write to a '
                                      'new --out')
        os.makedirs(out_dir, exist_ok=True)

    def save(self, rows: List[dict], record: dict) -> List[dict]:
        """Write ``benchmark.json`` with this run's rows and record; returns all rows."""
        rows = merge_rows(self.previous['rows'], rows)
        with open(self.json_path, 'w') as f:
            json.dump(dict(runs=self.previous['runs'] + [dict(record, command=self.command)],
                           rows=rows), f, indent=1)
        return rows

    def finish(self, rows: List[dict], record: dict) -> List[dict]:
        """Save, then write the tables and the plot of all rows; returns them."""
        from . import report
        rows = self.save(rows, record)
        with open(osp.join(self.out_dir, 'benchmark.md'), 'w') as f:
            f.write(report.markdown(rows))
        report.plot(rows, osp.join(self.out_dir, 'benchmark.png'))
        return rows
