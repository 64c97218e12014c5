"""The project's performance targets (issues #12 and #19), each met, not met or inconclusive.

    python benchmarks/targets.py [--benchmark benchmarks/benchmark.json]
        [--deploy-report work_dirs/benchmark_targets/openvino_int8/report.json]
        [--orepa-cost benchmarks/orepa_training_cost.json] [--out benchmarks/targets.md]

Reads the rows ``tools/benchmark.py`` wrote (see ``benchmarks/commands.sh``).
Every ratio verdict is paired: both rows come from one interleaved group, and
the verdict is ``inconclusive`` when the 95% interval of the paired ratios
contains the target (:mod:`mmrep.benchmark.stats`). A target whose rows are
missing says "not measured". The targets are the project's, not the tool's:
``tools/benchmark.py`` prints figures and ratios only.
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import sys
from typing import List, Optional, Sequence

from mmrep.benchmark.report import find_row, paired
from mmrep.benchmark.stats import INCONCLUSIVE, MET, NOT_MET, RatioSummary, verdict

HERE = osp.dirname(osp.abspath(__file__))
NOT_MEASURED = 'not measured'
TORCH_AND_RUNTIMES = ('fused', 'fused_channels_last', 'onnxruntime', 'onnxruntime_int8',
                      'openvino', 'openvino_int8')


def _line(target: str, measured: str, result: str) -> dict:
    return dict(target=target, measured=measured, verdict=result)


def _ratio_text(summary, a: str, b: str) -> str:
    return (f'{a} / {b} = {summary.median:.3f} [{summary.low:.3f}, {summary.high:.3f}] '
            f'({summary.pairs} pairs)')


def _settings(rows: List[dict], model: str):
    """(batch, threads) pairs at which ``model`` was timed."""
    return sorted({(r['batch'], r.get('threads')) for r in rows
                   if r['model'] == model and 'samples_ms' in r})


def _ms(row: dict) -> str:
    return f"{row['median_ms']:.1f} ms"


def openvino_vs_onnxruntime(rows: List[dict]) -> List[dict]:
    """#19: OpenVINO bf16 or INT8 (the faster) >= 3x faster than onnxruntime fp32,
    slim RetinaNet and RepLKNet-31B, at 1 and at 2 threads."""
    out = []
    for model in ('RetinaNet-RepVGG-A0-slim (shapes)', 'RepLKNet-31B'):
        for threads in (1, 2):
            target = f'{model}, {threads} thread(s): OpenVINO >= 3x faster than onnxruntime fp32'
            ort = find_row(rows, model, 'onnxruntime', batch=1, threads=threads)
            candidates = [r for r in (find_row(rows, model, p, batch=1, threads=threads)
                                      for p in ('openvino', 'openvino_int8')) if r]
            if ort is None or not candidates:
                out.append(_line(target, 'rows missing', NOT_MEASURED))
                continue
            best = min(candidates, key=lambda r: r['median_ms'])
            summary = paired(best, ort)
            precision = best.get('precision') or best.get('inference_precision', '?')
            out.append(_line(target, f"`{best['path']}` ({precision}) {_ms(best)} vs "
                             f"{_ms(ort)}: " + _ratio_text(summary, best['path'], 'onnxruntime')
                             + f', speed-up {1 / summary.median:.2f}x',
                             verdict(summary, at_most=1 / 3)))
    return out


def openvino_int8_accuracy(report_path: Optional[str], max_drop: float = 1.0) -> List[dict]:
    """#19: the QARepVGG-A0 RetinaNet's OpenVINO INT8 mAP within 1.0 point of its fp32 mAP
    on held-out shapes images (``tools/deploy.py ... --backend openvino --precision int8
    --eval``)."""
    target = 'QARepVGG-A0 RetinaNet: OpenVINO INT8 bbox mAP within 1.0 point of fp32 (held out)'
    if not report_path or not osp.isfile(report_path):
        return [_line(target, f'no deploy report ({report_path})', NOT_MEASURED)]
    with open(report_path) as f:
        report = json.load(f)
    section = report.get('openvino') or {}
    fp32, int8 = section.get('bbox_mAP_fp32'), section.get('bbox_mAP_int8')
    if fp32 is None or int8 is None:
        return [_line(target, f'{report_path} has no openvino bbox_mAP_fp32/int8', NOT_MEASURED)]
    drop = 100 * (fp32 - int8)  # mmdet's mAP is a fraction: one point is 0.01
    images = section.get('eval_image_ids')
    return [_line(target, f'fp32 {fp32:.3f}, INT8 {int8:.3f}: drop {drop:.1f} points'
                  + (f' on {len(images)} held-out images' if images else ''),
                  MET if drop <= max_drop else NOT_MET)]


def twins(rows: List[dict], margin: float = 1.03) -> List[dict]:
    """#19: mmrep's fused models never slower than their timm twins doing the same work in
    the same runtime: paired time ratio mmrep/twin <= 1.03, or inconclusive; never a clear loss."""
    out = []
    names = dict.fromkeys(r['model'][:-len(' (timm)')] for r in rows
                          if r['model'].endswith(' (timm)'))
    for name in names:
        for batch, threads in sorted({(r['batch'], r.get('threads')) for r in rows
                                      if r['model'] == name}):
            for path in TORCH_AND_RUNTIMES:
                ours = find_row(rows, name, path, batch=batch, threads=threads)
                twin = find_row(rows, f'{name} (timm)', path, batch=batch, threads=threads)
                if ours is None or twin is None:
                    continue
                summary = paired(ours, twin)
                result = verdict(summary, at_most=margin)
                # "never a clear loss": inconclusive passes this target
                out.append(_line(f'{name} b{batch} {threads}t `{path}`: mmrep / timm twin <= '
                                 f'{margin}', f'{_ms(ours)} vs {_ms(twin)}: '
                                 + _ratio_text(summary, 'mmrep', 'timm'),
                                 result if result != INCONCLUSIVE else
                                 f'{INCONCLUSIVE} (passes: no clear loss)'))
    return out or [_line('mmrep fused vs timm twins, same runtime', 'rows missing', NOT_MEASURED)]


def plain_limit(rows: List[dict], margin: float = 1.03) -> List[dict]:
    """#12: fused RepVGG-A0 within 3% of its plain limit (each layout)."""
    out = []
    for batch, threads in _settings(rows, 'RepVGG-A0'):
        for path, limit_path in (('fused', 'plain_limit'),
                                 ('fused_channels_last', 'plain_limit_channels_last')):
            fused = find_row(rows, 'RepVGG-A0', path, batch=batch, threads=threads)
            limit = find_row(rows, 'RepVGG-A0', limit_path, batch=batch, threads=threads)
            if fused is None or limit is None:
                continue
            summary = paired(fused, limit)
            out.append(_line(f'RepVGG-A0 b{batch} {threads}t `{path}` within 3% of its plain '
                             'limit', f'{_ms(fused)} vs {_ms(limit)}: '
                             + _ratio_text(summary, path, limit_path),
                             verdict(summary, at_most=margin)))
    return out or [_line('RepVGG-A0 within 3% of its plain limit', 'rows missing',
                         NOT_MEASURED)]


def replknet_fast_path(rows: List[dict]) -> List[dict]:
    """#12: RepLKNet-31B's best fused path >= 5x faster than fused NCHW."""
    out = []
    for batch, threads in _settings(rows, 'RepLKNet-31B'):
        nchw = find_row(rows, 'RepLKNet-31B', 'fused', batch=batch, threads=threads)
        others = [r for r in (find_row(rows, 'RepLKNet-31B', p, batch=batch, threads=threads)
                              for p in TORCH_AND_RUNTIMES[1:]) if r]
        if nchw is None or not others:
            continue
        best = min(others, key=lambda r: r['median_ms'])
        summary = paired(best, nchw)
        out.append(_line(f'RepLKNet-31B b{batch} {threads}t: best fused path >= 5x faster '
                         'than fused NCHW', f"`{best['path']}` {_ms(best)} vs {_ms(nchw)}: "
                         + _ratio_text(summary, best['path'], 'fused'),
                         verdict(summary, at_most=0.2)))
    return out or [_line('RepLKNet-31B best fused path >= 5x faster than fused NCHW',
                         'rows missing', NOT_MEASURED)]


def speed_built_detector(rows: List[dict]) -> List[dict]:
    """#12: the speed-built detector >= 2x faster than stock RetinaNet-R18, same runtime
    and input (network only: no NMS)."""
    out = []
    fast_name, stock_name = 'RetinaNet-RepVGG-A0-slim (shapes)', 'RetinaNet-R18 (shapes)'
    for batch, threads in _settings(rows, fast_name):
        for path in TORCH_AND_RUNTIMES:
            fast = find_row(rows, fast_name, path, batch=batch, threads=threads)
            stock = find_row(rows, stock_name, path, batch=batch, threads=threads)
            if fast is None or stock is None or fast['group'] != stock['group']:
                continue
            summary = paired(fast, stock)
            shape = 'x'.join(map(str, fast['input'][2:]))
            out.append(_line(f'speed-built RetinaNet b{batch} {threads}t >= 2x faster than '
                             f'stock R18, `{path}`, {shape}', f'{_ms(fast)} vs {_ms(stock)}: '
                             + _ratio_text(summary, 'slim', 'R18'),
                             verdict(summary, at_most=0.5)))
    return out or [_line('speed-built RetinaNet >= 2x faster than stock R18', 'rows missing',
                         NOT_MEASURED)]


def orepa_training_cost(path: Optional[str]) -> List[dict]:
    """#12: an OREPA training step at most 0.55x the time and 0.7x the peak memory of
    DBB-style (``benchmarks/orepa_training_cost.py``: paired interleaved time ratio;
    memory of each network alone in a fresh process)."""
    time_target = 'OREPA-ResNet-18 training step <= 0.55x the time of DBB-style'
    memory_target = 'OREPA-ResNet-18 training step <= 0.7x the peak memory of DBB-style'
    data = None
    if path and osp.isfile(path):
        with open(path) as f:
            data = json.load(f)
    ratio = (data or {}).get('ratios', {}).get('time_orepa_over_dbb')
    if not isinstance(ratio, dict):  # missing, or a single-draw float of the older script
        why = 'no paired run' + (f' in {path}' if data else f' ({path})')
        return [_line(time_target, why, NOT_MEASURED), _line(memory_target, why, NOT_MEASURED)]
    summary = RatioSummary(**ratio)
    results = data['results']
    memory = data['ratios'].get('memory_orepa_over_dbb')
    return [_line(time_target, f"{results['OREPA']['step_s']:.2f} vs "
                  f"{results['DBB-style']['step_s']:.2f} s: "
                  + _ratio_text(summary, 'OREPA', 'DBB-style'), verdict(summary, at_most=0.55)),
            _line(memory_target, f"{results['OREPA']['peak_mb']:.0f} vs "
                  f"{results['DBB-style']['peak_mb']:.0f} MB: {memory}",
                  NOT_MEASURED if memory is None else MET if memory <= 0.7 else NOT_MET)]


def all_targets(rows: List[dict], deploy_report: Optional[str],
                orepa_cost: Optional[str] = None) -> List[dict]:
    return (openvino_vs_onnxruntime(rows) + openvino_int8_accuracy(deploy_report)
            + twins(rows) + plain_limit(rows) + replknet_fast_path(rows)
            + speed_built_detector(rows) + orepa_training_cost(orepa_cost))


def markdown(lines: List[dict]) -> str:
    out = ['| target | measured | verdict |', '|---|---|---|']
    out += [f"| {t['target']} | {t['measured']} | **{t['verdict']}** |" for t in lines]
    return '\n'.join(out) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--benchmark', default=osp.join(HERE, 'benchmark.json'))
    parser.add_argument('--deploy-report',
                        default=osp.join('work_dirs', 'benchmark_targets', 'openvino_int8',
                                         'report.json'),
                        help="tools/deploy.py's report.json of the OpenVINO INT8 run")
    parser.add_argument('--orepa-cost', default=osp.join(HERE, 'orepa_training_cost.json'),
                        help="benchmarks/orepa_training_cost.py's output")
    parser.add_argument('--out', default=osp.join(HERE, 'targets.md'))
    args = parser.parse_args(argv)
    with open(args.benchmark) as f:
        data = json.load(f)
    if not isinstance(data, dict) or 'rows' not in data:
        sys.exit(f'{args.benchmark} was written by an older tools/benchmark.py (no paired '
                 'samples): run the commands in benchmarks/commands.sh')
    lines = all_targets(data['rows'], args.deploy_report, args.orepa_cost)
    text = markdown(lines)
    with open(args.out, 'w') as f:
        f.write(text)
    print(text)
    return lines


if __name__ == '__main__':
    main()
