"""The main job on the built-in shapes data: train, evaluate, fuse, evaluate, time, draw, export.

    python tools/demo.py [--work-dir work_dirs/demo] [--iters N]
"""
import argparse
import json
import os.path as osp
import time

import torch

import mmrep
from mmengine.config import Config
from mmengine.runner import Runner

from mmrep.datasets.shapes import make_shapes_dataset
from mmrep.engine.fast_path import to_fast_path

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs', 'retinanet_repghost_shapes_demo.py')


def latency_ms(model, batch, repeats: int = 10) -> float:
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(batch, False)
        model(**data, mode='tensor')
        start = time.perf_counter()
        for _ in range(repeats):
            model(**data, mode='tensor')
    return (time.perf_counter() - start) / repeats * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'demo'))
    parser.add_argument('--data-root', default=osp.join(ROOT, 'data', 'shapes'))
    parser.add_argument('--iters', type=int, default=None, help='training iterations')
    args = parser.parse_args()

    make_shapes_dataset(args.data_root)
    cfg = Config.fromfile(CONFIG)
    data_root = args.data_root.rstrip('/') + '/'
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = data_root
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        evaluator.ann_file = data_root + 'annotations/val.json'
    if args.iters:
        cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = args.iters
        cfg.default_hooks.checkpoint.interval = args.iters
        warmup = cfg.param_scheduler[0]
        warmup.end = min(warmup.end, args.iters // 2 or 1)
        cfg.param_scheduler[1].begin = warmup.end
        cfg.param_scheduler[1].end = max(args.iters, warmup.end + 1)
    cfg.work_dir = args.work_dir

    runner = Runner.from_cfg(cfg)
    runner.train()  # RepDeployHook writes the fused checkpoint and config at the end

    # The val loop evaluates runner.model as it is; the test loop would call
    # RepDeployHook.before_test and so fuse before the first evaluation.
    batch = next(iter(runner.val_dataloader))
    unfused = runner.val_loop.run()
    unfused_ms = latency_ms(runner.model, batch)
    assert mmrep.count_unfused(runner.model) > 0
    mmrep.reparameterize_model(runner.model, inplace=True)
    to_fast_path(runner.model)  # the fastest correct layout, as tools/test.py
    fused = runner.val_loop.run()
    fused_ms = latency_ms(runner.model, batch)

    key = 'coco/bbox_mAP'  # absent when a barely trained model detects nothing: mAP 0
    unfused_map, fused_map = unfused.get(key, 0.0), fused.get(key, 0.0)
    result = dict(unfused_mAP=unfused_map, fused_mAP=fused_map,
                  mAP_difference=abs(unfused_map - fused_map),
                  unfused_latency_ms=unfused_ms, fused_latency_ms=fused_ms,
                  batch_size=len(batch['inputs']))

    # the fused model's detections on one validation image
    from mmdet.apis import inference_detector
    from mmdet.registry import VISUALIZERS
    import mmcv
    image = osp.join(data_root, 'val', 'val_0000.png')
    runner.model.cfg = cfg
    runner.model.dataset_meta = runner.test_dataloader.dataset.metainfo
    detections = inference_detector(runner.model, image)
    visualizer = VISUALIZERS.build(dict(type='DetLocalVisualizer', name='mmrep_demo'))
    visualizer.dataset_meta = runner.model.dataset_meta
    picture = osp.join(args.work_dir, 'fused_detections.png')
    visualizer.add_datasample('fused', mmcv.imread(image, channel_order='rgb'), detections,
                              draw_gt=False, pred_score_thr=0.3, out_file=picture)
    result['picture'] = picture

    # export the trained (unfused) checkpoint: fuse, ONNX through mmdeploy, check in
    # onnxruntime, then quantize to INT8 (calibrated on training images) and evaluate
    # both on the val images (held out from calibration)
    from mmrep.deploy import export_and_verify
    with open(osp.join(args.work_dir, 'last_checkpoint')) as f:
        last_checkpoint = f.read().strip()
    report = export_and_verify(osp.join(ROOT, 'configs', 'deploy', 'detection_onnxruntime_static.py'),
                               cfg, last_checkpoint, image, osp.join(args.work_dir, 'onnx'),
                               int8=dict(), evaluate=True, calib_images=32, max_drop=None)
    result['onnx_report'] = osp.join(args.work_dir, 'onnx', 'report.json')
    int8 = report['int8']
    result['int8'] = {k: int8.get(k) for k in ('bbox_mAP_fp32', 'bbox_mAP_int8',
                                               'latency_ms_fp32', 'latency_ms_int8')}

    with open(osp.join(args.work_dir, 'demo_result.json'), 'w') as f:
        json.dump(result, f, indent=2)
    print('\n=== mmrep demo: RetinaNet-RepGhostNet on the built-in shapes data ===')
    print(f"bbox mAP unfused {result['unfused_mAP']:.3f} | fused {result['fused_mAP']:.3f} "
          f"| difference {result['mAP_difference']:.4f}")
    print(f'latency per batch of {result["batch_size"]} (CPU): unfused {unfused_ms:.1f} ms | '
          f'fused {fused_ms:.1f} ms')
    print(f'picture of fused detections: {picture}')
    print(f"ONNX export checked in onnxruntime: ok={report.get('ok')}, report {result['onnx_report']}")
    print(f"INT8 ONNX (QDQ, {int8['calibration_images']} calibration images): bbox mAP "
          f"fp32 {int8['bbox_mAP_fp32']:.3f} | int8 {int8['bbox_mAP_int8']:.3f} | "
          f"latency batch 1 fp32 {int8['latency_ms_fp32']:.1f} ms | "
          f"int8 {int8['latency_ms_int8']:.1f} ms")
    if result['mAP_difference'] > 0.001:
        raise SystemExit('fused and unfused mAP differ by more than 0.001')
    if not report.get('ok'):
        raise SystemExit(f"the ONNX export failed its checks: {report.get('errors')}")
    return result


if __name__ == '__main__':
    main()
