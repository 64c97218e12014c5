"""Fuse a trained (unfused) checkpoint, export it with mmdeploy to ONNX, run it
in onnxruntime on a real image and check it against the fused PyTorch model.

    python tools/deploy.py DEPLOY_CFG MODEL_CFG CHECKPOINT IMAGE --work-dir DIR [--device cpu]
        [--int8 [--calib-images N] [--eval]]

Writes DIR/fused.pth, DIR/fused_config.py, DIR/end2end.onnx and DIR/report.json;
exits non-zero when the graph checks fail or the outputs disagree.

--int8 then quantizes end2end.onnx statically (onnxruntime QDQ, per-channel
int8 weights) after calibrating on N images of the model config's val (else
test) data set through its test pipeline, writes DIR/end2end_int8.onnx and adds
an ``int8`` section to report.json: agreement with the fp32 model, onnxruntime
latency of both, and with --eval the val-set metrics of the fused PyTorch,
fp32 ONNX and INT8 ONNX models (bbox_mAP_*, segm_mAP_*, mIoU_*).
"""
import argparse
import json
import sys

from mmengine.config import Config, DictAction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Export a fused mmrep model to ONNX and verify it')
    parser.add_argument('deploy_cfg', help='e.g. configs/deploy/detection_onnxruntime_static.py')
    parser.add_argument('model_cfg', help='the training config')
    parser.add_argument('checkpoint', help='the unfused (training) checkpoint')
    parser.add_argument('img', help='a real image to export with and to compare on')
    parser.add_argument('--work-dir', required=True, help='output directory')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--max-unmatched', type=int, default=0,
                        help='top-20 PyTorch detections allowed without an onnxruntime match '
                             '(two-stage detectors choose RPN proposals slightly differently)')
    parser.add_argument('--int8', action='store_true',
                        help='also quantize the export to INT8 (onnxruntime static QDQ) and measure it')
    parser.add_argument('--calib-images', type=int, default=None,
                        help='val images that calibrate the INT8 activation ranges (default 32)')
    parser.add_argument('--eval', action='store_true',
                        help='with --int8: evaluate PyTorch, fp32 and INT8 models on the val set')
    parser.add_argument('--latency-threads', type=int, default=1,
                        help='with --int8: onnxruntime intra-op threads for the latency figures')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override model config settings, e.g. model.test_cfg.score_thr=0.01')
    args = parser.parse_args(argv)
    if not args.int8 and (args.calib_images is not None or args.eval):
        parser.error('--calib-images and --eval apply to the INT8 path: add --int8')
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import mmrep.deploy  # noqa: F401  (torch>=2.9 export fixes before mmdeploy runs)
    from mmrep.deploy import ExportCheckError, export_and_verify

    cfg = Config.fromfile(args.model_cfg)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    int8 = None
    if args.int8:
        from mmrep.deploy.quantize import DEFAULT_CALIB_IMAGES
        int8 = dict(calib_images=DEFAULT_CALIB_IMAGES if args.calib_images is None
                    else args.calib_images,
                    evaluate=args.eval, threads=args.latency_threads)
    report = export_and_verify(args.deploy_cfg, cfg, args.checkpoint, args.img,
                               args.work_dir, device=args.device,
                               tolerances=dict(max_unmatched=args.max_unmatched), int8=int8)
    summary = {k: report['graph'][k] for k in ('bn_nodes', 'conv_weights', 'torch_conv2d')}
    print(json.dumps(dict(summary, **report['agreement']), indent=1))
    if 'int8' in report:
        print('int8: ' + json.dumps({k: v for k, v in report['int8'].items()
                                     if k not in ('metrics', 'graph', 'errors')}, indent=1))
    if not report['ok']:
        raise ExportCheckError('export check failed:\n  ' + '\n  '.join(report['errors']))
    print(f"OK: {report['onnx']} verified, report in {args.work_dir}/report.json")
    return report


if __name__ == '__main__':
    try:
        main()
    except Exception as exc:  # a clear reason and a non-zero exit for our own checks
        from mmrep.checkpoint import NotACheckpointError, UntrustedCheckpointError
        from mmrep.deploy import ExportCheckError
        from mmrep.deploy.quantize import Int8InputError
        from mmrep.engine.deploy_utils import CheckpointMismatchError
        if not isinstance(exc, (ExportCheckError, CheckpointMismatchError, Int8InputError,
                                NotACheckpointError, UntrustedCheckpointError)):
            raise
        sys.exit(f'{type(exc).__name__}: {exc}')
