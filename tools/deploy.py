"""Fuse a trained (unfused) checkpoint, export it with mmdeploy to ONNX, run it in
onnxruntime on a real image and check it against the fused PyTorch model; then,
as asked, quantize it (onnxruntime INT8) or compile it with OpenVINO, and
evaluate on held-out images.

    python tools/deploy.py DEPLOY_CFG MODEL_CFG CHECKPOINT IMAGE --work-dir DIR [--device cpu]
        [--int8 [--calib-method minmax|entropy|percentile]]
        [--backend openvino [--precision f32|bf16|int8] [--calib-method performance|mixed]]
        [--calib-images N] [--calib-from train|val] [--eval [--max-drop POINTS]]

DEPLOY_CFG and MODEL_CFG are paths or names such as
mmrep::configs/deploy/detection_onnxruntime_static.py.

Writes DIR/fused.pth, DIR/fused_config.py, DIR/end2end.onnx and DIR/report.json
(the report records the exact network input shape and preprocessing); exits
non-zero when the graph checks fail or the outputs disagree.

--int8 quantizes end2end.onnx statically with onnxruntime (QDQ, per-channel
int8 weights, activation ranges by --calib-method) into DIR/end2end_int8.onnx.
--backend openvino compiles end2end.onnx with OpenVINO at --precision (default:
OpenVINO's fastest float precision on this CPU, bf16 with AMX; int8: NNCF,
preset by --calib-method), checks its f32 conversion against PyTorch like the
onnxruntime path and writes DIR/end2end.xml/.bin.
INT8 calibrates on --calib-images images of the training set read through the
test pipeline (--calib-from train), or on val images that are then left out of
the evaluation (--calib-from val). --eval evaluates PyTorch, fp32 and the INT8
or OpenVINO model on the held-out val images and exits non-zero when the
INT8/bf16 metric falls more than --max-drop points below fp32.
"""
import argparse
import json
import sys

from mmengine.config import DictAction

BACKENDS = ('onnxruntime', 'openvino')
ORT_CALIB_METHODS = ('minmax', 'entropy', 'percentile')
NNCF_PRESETS = ('performance', 'mixed')


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default where there is one (not for flags, nor where the help says it)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export a fused mmrep model to ONNX and verify it; INT8 / OpenVINO',
        formatter_class=_HelpWithDefaults)
    parser.add_argument('deploy_cfg', help='deploy config, a path or e.g. '
                        'mmrep::configs/deploy/detection_onnxruntime_static.py')
    parser.add_argument('model_cfg', help='the training config, a path or mmrep::configs/<name>.py')
    parser.add_argument('checkpoint', help='the unfused (training) checkpoint')
    parser.add_argument('img', help='a real image to export with and to compare on')
    parser.add_argument('--work-dir', required=True, help='output directory')
    parser.add_argument('--device', default='cpu', help='where PyTorch runs for the export')
    parser.add_argument('--max-unmatched', type=int, default=0,
                        help='top-20 PyTorch detections allowed without a backend match '
                             '(two-stage detectors choose RPN proposals slightly differently)')
    parser.add_argument('--backend', choices=BACKENDS, default='onnxruntime',
                        help='runtime after the verified export: onnxruntime only, or also OpenVINO')
    parser.add_argument('--precision', choices=('f32', 'bf16', 'int8'), default=None,
                        help="with --backend openvino; default: OpenVINO's fastest float "
                             'precision on this CPU (bf16 with AMX), stated in the output')
    parser.add_argument('--int8', action='store_true',
                        help='onnxruntime: also quantize the export to INT8 (static QDQ) and measure it')
    parser.add_argument('--calib-method', default=None,
                        help='INT8 activation ranges: onnxruntime minmax (default), entropy or '
                             'percentile; OpenVINO: NNCF preset performance (default) or mixed')
    parser.add_argument('--calib-images', type=int, default=None,
                        help='images that calibrate INT8 (default 32)')
    parser.add_argument('--calib-from', choices=('train', 'val'), default='train',
                        help='calibrate on training images through the test pipeline, or on val '
                             'images that are then left out of the evaluation')
    parser.add_argument('--eval', action='store_true',
                        help='evaluate PyTorch, fp32 and the INT8/OpenVINO model on held-out val images')
    parser.add_argument('--max-drop', type=float, default=1.0,
                        help='with --eval: fail when INT8/bf16 falls more than this many points '
                             '(mAP x100, mIoU %%) below fp32; negative disables the floor')
    parser.add_argument('--latency-threads', type=int, default=1,
                        help='threads of both runtimes for the latency figures')
    parser.add_argument('--latency-repeats', type=int, default=20,
                        help='timed runs per model for the latency figures (the median is reported)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override model config settings, e.g. model.test_cfg.score_thr=0.01')
    args = parser.parse_args(argv)
    openvino = args.backend == 'openvino'
    quantizing = args.int8 or args.precision == 'int8'
    if args.precision is not None and not openvino:
        parser.error('--precision applies to --backend openvino')
    if args.int8 and openvino:
        parser.error('with --backend openvino ask for INT8 with --precision int8 (NNCF); '
                     '--int8 is onnxruntime INT8')
    if args.eval and not (args.int8 or openvino):
        parser.error('--eval compares an INT8 or OpenVINO model with fp32: add --int8 or '
                     '--backend openvino')
    if args.latency_repeats < 1 or args.latency_threads < 1:
        parser.error('--latency-repeats and --latency-threads must be at least 1')
    if not quantizing and (args.calib_images is not None or args.calib_method is not None):
        parser.error('--calib-images and --calib-method apply to INT8: add --int8 '
                     '(onnxruntime) or --backend openvino --precision int8')
    methods = NNCF_PRESETS if openvino else ORT_CALIB_METHODS
    if args.calib_method is not None and args.calib_method not in methods:
        parser.error(f'--calib-method for {args.backend} is one of {", ".join(methods)}, '
                     f'got {args.calib_method!r}')
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from mmrep.deploy import ExportCheckError, export_and_verify
    from mmrep.deploy.calibration import DEFAULT_CALIB_IMAGES
    from mmrep.deploy.evaluation import AccuracyDropError
    from mmrep.engine.cli import config_path, read_config

    cfg = read_config(config_path(args.model_cfg))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    int8 = openvino = None
    if args.int8:
        int8 = dict(calib_method=args.calib_method or ORT_CALIB_METHODS[0],
                    threads=args.latency_threads, repeats=args.latency_repeats)
    if args.backend == 'openvino':
        openvino = dict(precision=args.precision, threads=args.latency_threads,
                        repeats=args.latency_repeats, preset=args.calib_method or NNCF_PRESETS[0])
    report = export_and_verify(
        config_path(args.deploy_cfg), cfg, args.checkpoint, args.img, args.work_dir,
        device=args.device, tolerances=dict(max_unmatched=args.max_unmatched), int8=int8,
        openvino=openvino, evaluate=args.eval,
        calib_images=DEFAULT_CALIB_IMAGES if args.calib_images is None else args.calib_images,
        calib_from=args.calib_from, max_drop=args.max_drop if args.max_drop >= 0 else None)
    summary = {k: report['graph'][k] for k in ('bn_nodes', 'conv_weights', 'torch_conv2d')}
    print('onnxruntime fp32 vs PyTorch: ' + json.dumps(dict(summary, **report['agreement']),
                                                          indent=1))
    for name in ('int8', 'openvino'):
        if name in report:
            shown = {k: v for k, v in report[name].items()
                     if k not in ('metrics', 'graph', 'errors', 'accuracy_errors',
                                  'calibration_image_ids', 'eval_image_ids')
                     and not k.startswith('agreement')}
            print(f'{name}: ' + json.dumps(shown, indent=1, default=str))
    if not report['ok']:
        accuracy = [e for name in ('int8', 'openvino')
                    for e in report.get(name, {}).get('accuracy_errors', [])]
        if accuracy and len(accuracy) == len(report['errors']):
            raise AccuracyDropError('; '.join(accuracy) + f' (report in {args.work_dir}/report.json)')
        raise ExportCheckError('export check failed:\n  ' + '\n  '.join(report['errors']))
    print(f"OK: {report['onnx']} verified, report in {args.work_dir}/report.json")
    return report


if __name__ == '__main__':
    try:
        main()
    except Exception as exc:  # a clear reason and a non-zero exit for our own checks
        from mmrep.checkpoint import NotACheckpointError, UntrustedCheckpointError
        from mmrep.deploy import ExportCheckError
        from mmrep.deploy.calibration import DeployInputError
        from mmrep.deploy.evaluation import AccuracyDropError
        from mmrep.deploy.openvino import OpenVINOError
        from mmrep.engine.deploy_utils import CheckpointMismatchError
        if not isinstance(exc, (ExportCheckError, CheckpointMismatchError, DeployInputError,
                                AccuracyDropError, OpenVINOError, FileNotFoundError,
                                NotACheckpointError, UntrustedCheckpointError)):
            raise
        sys.exit(f'{type(exc).__name__}: {exc}')
