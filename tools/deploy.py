"""Fuse a trained (unfused) checkpoint, export it with mmdeploy to ONNX, run it
in onnxruntime on a real image and check it against the fused PyTorch model.

    python tools/deploy.py DEPLOY_CFG MODEL_CFG CHECKPOINT IMAGE --work-dir DIR [--device cpu]

Writes DIR/fused.pth, DIR/fused_config.py, DIR/end2end.onnx and DIR/report.json;
exits non-zero when the graph checks fail or the outputs disagree.
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
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override model config settings, e.g. model.test_cfg.score_thr=0.01')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import mmrep.deploy  # noqa: F401  (torch>=2.9 export fixes before mmdeploy runs)
    from mmrep.deploy import ExportCheckError, export_and_verify

    cfg = Config.fromfile(args.model_cfg)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    report = export_and_verify(args.deploy_cfg, cfg, args.checkpoint, args.img,
                               args.work_dir, device=args.device,
                               tolerances=dict(max_unmatched=args.max_unmatched))
    summary = {k: report['graph'][k] for k in ('bn_nodes', 'conv_weights', 'torch_conv2d')}
    print(json.dumps(dict(summary, **report['agreement']), indent=1))
    if not report['ok']:
        raise ExportCheckError('export check failed:\n  ' + '\n  '.join(report['errors']))
    print(f"OK: {report['onnx']} verified, report in {args.work_dir}/report.json")
    return report


if __name__ == '__main__':
    try:
        main()
    except Exception as exc:  # a clear reason and a non-zero exit for our own checks
        from mmrep.deploy import ExportCheckError
        from mmrep.engine.deploy_utils import CheckpointMismatchError
        if not isinstance(exc, (ExportCheckError, CheckpointMismatchError)):
            raise
        sys.exit(f'{type(exc).__name__}: {exc}')
