"""The INT8 calibration table of docs/en/user_guides/int8.md: every calibration method, measured.

Trains (unless its checkpoint is there) the RetinaNet-RepVGG-A0 and
RetinaNet-QARepVGG-A0 shapes configs and the UPerNet-RepVGG-A0 CamVid config
with a schedule shortened to fit a CPU and from random weights, then runs
``tools/deploy.py`` on each with ``--eval`` once per precision / calibration
method:

* onnxruntime INT8: ``--calib-method minmax``, ``entropy``, ``percentile``;
* OpenVINO: ``--precision bf16``, and ``int8`` with the NNCF presets
  ``performance`` and ``mixed``.

INT8 calibrates on 32 training images read through the test pipeline; every
model is evaluated on the whole val set (shapes: 40 images, CamVid here: 21),
which none of them calibrated on. Each run writes its report.json under
``WORK_DIR/<config>/<run>/``; this script then prints the table (markdown)
and writes ``WORK_DIR/int8_calibration.json``.

    python benchmarks/int8_calibration.py [--work-dir work_dirs/int8_calibration]
        [--det-iters 400] [--seg-iters 300] [--only-table] [--latency-threads 1]

Accuracy figures do not depend on the machine's load; latency figures do:
publish those only from a run on an otherwise idle machine.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PY = sys.executable

MODELS = {
    'retinanet_repvgg-a0_shapes_demo': dict(
        kind='det', image='data/shapes/val/val_0000.png',
        deploy='configs/deploy/detection_onnxruntime_static.py', metric='bbox_mAP'),
    'retinanet_qarepvgg-a0_shapes_demo': dict(
        kind='det', image='data/shapes/val/val_0000.png',
        deploy='configs/deploy/detection_onnxruntime_static.py', metric='bbox_mAP'),
    'upernet_repvgg-a0_camvid': dict(
        kind='seg', image='../shared/data/camvid/test/0001TP_008550.png',
        deploy='configs/deploy/segmentation_onnxruntime_static.py', metric='mIoU'),
}
# run name -> tools/deploy.py options
RUNS = {
    'ort_minmax': ['--int8', '--calib-method', 'minmax'],
    'ort_entropy': ['--int8', '--calib-method', 'entropy'],
    'ort_percentile': ['--int8', '--calib-method', 'percentile'],
    'ov_bf16': ['--backend', 'openvino', '--precision', 'bf16'],
    'ov_int8_performance': ['--backend', 'openvino', '--precision', 'int8',
                            '--calib-method', 'performance'],
    'ov_int8_mixed': ['--backend', 'openvino', '--precision', 'int8', '--calib-method', 'mixed'],
}


def train_options(kind: str, iters: int) -> list:
    """The config's recipe with its schedule shortened to ``iters``, seeded, from scratch.

    From scratch (``init_cfg=None``): the UPerNet config names ImageNet weights
    on the hub, which an offline machine cannot fetch; the shapes configs start
    from random weights anyway.
    """
    common = ['model.backbone.init_cfg=None',
              f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
              f'default_hooks.checkpoint.interval={iters}', 'randomness.seed=0',
              'train_dataloader.num_workers=1', 'val_dataloader.num_workers=0',
              'val_dataloader.persistent_workers=False']
    if kind == 'det':
        # deterministic=True made training about 5x slower on this CPU
        return common + ['randomness.deterministic=False', f'param_scheduler.1.end={iters}']
    return common + [f'param_scheduler.0.end={iters}', 'train_dataloader.batch_size=4',
                     'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False']


def run(cmd: list, log: str) -> int:
    print('$ ' + ' '.join(cmd), flush=True)
    with open(log, 'w') as f:
        return subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              env=dict(os.environ, OMP_NUM_THREADS='1')).returncode


def checkpoint(work: str, name: str, kind: str, iters: int) -> str:
    train_dir = osp.join(work, name, 'train')
    last = osp.join(train_dir, 'last_checkpoint')
    if not osp.isfile(last):
        os.makedirs(train_dir, exist_ok=True)
        code = run([PY, 'tools/train.py', f'configs/{name}.py', '--work-dir', train_dir,
                    '--cfg-options', *train_options(kind, iters)], osp.join(train_dir, 'train.log'))
        if code:
            sys.exit(f'training {name} failed: see {train_dir}/train.log')
    with open(last) as f:
        return f.read().strip()


def collect(work: str) -> dict:
    """{model: {run: {metric values, latencies}}} from the reports."""
    table = {}
    for name, spec in MODELS.items():
        for run_name in RUNS:
            path = osp.join(work, name, run_name, 'report.json')
            if not osp.isfile(path):
                continue
            with open(path) as f:
                report = json.load(f)
            section = report.get('int8') or report.get('openvino') or {}
            low = 'int8' if 'int8' in report or section.get('precision') == 'int8' else 'bf16'
            metric = spec['metric']
            table.setdefault(name, {})[run_name] = dict(
                torch_fp32=section.get(f'{metric}_torch_fp32'),
                fp32=section.get(f'{metric}_fp32'), low=section.get(f'{metric}_{low}'),
                drop_points=section.get(f'{metric}_drop_points'),
                calibration_images=section.get('calibration_images'),
                eval_images=section.get('eval_images'),
                latency_fp32_ms=section.get('latency_ms_fp32', section.get('latency_ms_ort_fp32')),
                latency_ms=section.get('latency_ms_int8', section.get('latency_ms_openvino')),
                threads=section.get('latency_threads'), ok=report.get('ok'),
                errors=report.get('errors'))
    return table


def points(metric: str, value):
    if value is None:
        return 'n/a'
    return f'{value:.1f}' if metric == 'mIoU' else f'{100 * value:.1f}'


def markdown(table: dict, latency: bool) -> str:
    head = ('| model | runtime, method | metric | PyTorch fp32 | fp32 (same runtime) | '
            'INT8 / bf16 | drop (points)' + (' | fp32 ms | INT8/bf16 ms |' if latency else ' |'))
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    for name, runs in table.items():
        metric = MODELS[name]['metric']
        for run_name, r in runs.items():
            row = (f"| {name} | {run_name} | {metric} | {points(metric, r['torch_fp32'])} | "
                   f"{points(metric, r['fp32'])} | {points(metric, r['low'])} | "
                   f"{'n/a' if r['drop_points'] is None else format(r['drop_points'], '.1f')} |")
            if latency:
                row += f" {r['latency_fp32_ms']:.1f} | {r['latency_ms']:.1f} |"
            lines.append(row)
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'int8_calibration'))
    parser.add_argument('--det-iters', type=int, default=400, help='RetinaNet training iterations')
    parser.add_argument('--seg-iters', type=int, default=300, help='UPerNet training iterations')
    parser.add_argument('--calib-images', type=int, default=32)
    parser.add_argument('--latency-threads', type=int, default=1)
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    parser.add_argument('--runs', nargs='+', default=list(RUNS), choices=list(RUNS))
    parser.add_argument('--only-table', action='store_true', help='print the table of existing reports')
    parser.add_argument('--latency', action='store_true',
                        help='add the latency columns (publish them from an idle machine only)')
    args = parser.parse_args()
    work = osp.abspath(args.work_dir)
    if not args.only_table:
        subprocess.run([PY, '-c', "from mmrep.datasets.shapes import make_shapes_dataset as m; "
                        "m('data/shapes')"], cwd=ROOT, check=True)
        for name in args.models:
            spec = MODELS[name]
            ckpt = checkpoint(work, name, spec['kind'],
                              args.det_iters if spec['kind'] == 'det' else args.seg_iters)
            for run_name in args.runs:
                out = osp.join(work, name, run_name)
                os.makedirs(out, exist_ok=True)
                code = run([PY, 'tools/deploy.py', spec['deploy'], f'configs/{name}.py', ckpt,
                            spec['image'], '--work-dir', out, '--eval', '--max-drop', '-1',
                            '--latency-threads', str(args.latency_threads), *RUNS[run_name],
                            *(['--calib-images', str(args.calib_images)]
                              if 'int8' in run_name or 'ort_' in run_name else [])],
                           osp.join(out, 'deploy.log'))
                print(f'  {name} {run_name}: exit {code}', flush=True)
    table = collect(work)
    with open(osp.join(work, 'int8_calibration.json'), 'w') as f:
        json.dump(table, f, indent=2)
    print(markdown(table, args.latency))


if __name__ == '__main__':
    main()
