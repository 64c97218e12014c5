"""Run a detector exported by tools/deploy.py with plain onnxruntime and numpy: no mmdeploy,
no mmdet, no torch. Reads the image, preprocesses it as the model config's test pipeline
and data preprocessor do, runs end2end.onnx, maps the boxes back to the image and draws them.

    python demo/onnx_inference.py WORK_DIR/end2end.onnx IMAGE [--report WORK_DIR/report.json]
        [--out detections.jpg] [--score-thr 0.3]

Everything the preprocessing needs is in the ``preprocessing`` section of the
report.json that tools/deploy.py writes beside end2end.onnx (by default the
report next to the ONNX file):

1. read the image as BGR uint8 with OpenCV (as mmcv does);
2. resize it as the test pipeline's ``Resize`` (bilinear, mmcv's rounding; with
   ``keep_ratio`` one scale factor that fits the image into ``scale``);
3. BGR -> RGB when ``bgr_to_rgb``, then ``(x - mean) / std`` in float32, HWC -> NCHW;
4. pad at the bottom and right with ``pad_value`` to a multiple of
   ``pad_size_divisor`` (a static-shape graph takes exactly its input shape);
5. the graph's ``dets`` [1, N, 5] (x1, y1, x2, y2, score) are in network-input
   pixels: keep scores > 0, divide the boxes by the scale factors (w, h) and clip
   them to the image (mmdeploy's graph clips at the padded input, mmdet at the
   image: the one step mmdeploy's own ``inference_model`` leaves out).
"""
import argparse
import json
import os.path as osp
import sys

import cv2
import numpy as np
import onnxruntime as ort


def resize_step(pipeline):
    """The test pipeline's Resize transform (the one mmdet applies before packing)."""
    steps = [step for step in pipeline if step.get('type') in ('Resize', 'mmdet.Resize')]
    if len(steps) != 1:
        raise ValueError(f'expected one Resize in the test pipeline, found {len(steps)}: this '
                         'demo handles the mmdet detection pipelines mmrep ships')
    return steps[0]


def rescaled_size(width: int, height: int, scale, keep_ratio: bool):
    """mmcv's output size (w, h) for Resize(scale, keep_ratio)."""
    if not keep_ratio:
        return int(scale[0]), int(scale[1])
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def preprocess(image: np.ndarray, prep: dict):
    """(NCHW float32 input, (w_scale, h_scale)) of a BGR uint8 image."""
    resize = resize_step(prep['test_pipeline'])
    height, width = image.shape[:2]
    new_w, new_h = rescaled_size(width, height, resize['scale'], resize.get('keep_ratio', False))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    scale_factor = (new_w / width, new_h / height)
    norm = prep['data_preprocessor']
    x = resized.astype(np.float32)
    if norm.get('bgr_to_rgb', False) or norm.get('rgb_to_bgr', False):
        x = x[..., ::-1]
    x = (x - np.array(norm.get('mean', [0, 0, 0]), np.float32)) / \
        np.array(norm.get('std', [1, 1, 1]), np.float32)
    x = x.transpose(2, 0, 1)[None]
    divisor = int(norm.get('pad_size_divisor', 1))
    pad_h = -new_h % divisor
    pad_w = -new_w % divisor
    x = np.pad(x, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)),
               constant_values=float(norm.get('pad_value', 0)))
    return np.ascontiguousarray(x, dtype=np.float32), scale_factor


def detect(onnx_path: str, image_path: str, prep: dict):
    """Detections ``(boxes [N, 4] in image pixels, scores [N], labels [N])`` of one image."""
    image = cv2.imread(image_path, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f'cannot read an image from {image_path}')
    inputs, (w_scale, h_scale) = preprocess(image, prep)
    spec = prep['onnx_input']
    fixed = [d for d in spec['shape']]
    if all(isinstance(d, int) for d in fixed) and list(inputs.shape) != fixed:
        raise ValueError(f'{image_path} becomes {list(inputs.shape)} through the test pipeline, but '
                         f'the graph is fixed to {fixed}: export with a dynamic-shape deploy config')
    session = ort.InferenceSession(onnx_path, providers=['CPUExecutionProvider'])
    dets, labels = session.run(['dets', 'labels'], {spec['name']: inputs})[:2]
    keep = dets[0, :, 4] > 0
    boxes = dets[0, keep, :4] / np.array([w_scale, h_scale, w_scale, h_scale], np.float32)
    # the graph clips boxes at the padded network input; into the image, as mmdet clips them
    height, width = image.shape[:2]
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes, dets[0, keep, 4], labels[0, keep]


def draw(image_path: str, boxes, scores, labels, classes, score_thr: float, out_path: str):
    image = cv2.imread(image_path, cv2.IMREAD_COLOR)
    for box, score, label in zip(boxes, scores, labels):
        if score < score_thr:
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        name = classes[label] if classes and 0 <= label < len(classes) else str(label)
        cv2.rectangle(image, (x1, y1), (x2, y2), (0, 200, 0), 2)
        cv2.putText(image, f'{name} {score:.2f}', (x1, max(y1 - 4, 10)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 200, 0), 1)
    cv2.imwrite(out_path, image)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('onnx', help='end2end.onnx written by tools/deploy.py')
    parser.add_argument('image')
    parser.add_argument('--report', help='its report.json (default: beside the ONNX file)')
    parser.add_argument('--out', default='detections.jpg', help='picture with the boxes drawn')
    parser.add_argument('--score-thr', type=float, default=0.3, help='boxes drawn and printed')
    args = parser.parse_args(argv)
    report_path = args.report or osp.join(osp.dirname(args.onnx), 'report.json')
    with open(report_path) as f:
        report = json.load(f)
    if report.get('task') != 'ObjectDetection' or 'preprocessing' not in report:
        sys.exit(f'{report_path} is not the report of a detection export by tools/deploy.py')
    prep = report['preprocessing']
    boxes, scores, labels = detect(args.onnx, args.image, prep)
    classes = prep.get('classes') or []
    draw(args.image, boxes, scores, labels, classes, args.score_thr, args.out)
    shown = scores >= args.score_thr
    print(f'{int(shown.sum())} detections with score >= {args.score_thr} '
          f'({len(scores)} in all), drawn into {args.out}')
    for box, score, label in zip(boxes[shown], scores[shown], labels[shown]):
        name = classes[label] if 0 <= label < len(classes) else str(label)
        print(f'  {name:<12} {score:.3f}  [{", ".join(f"{v:.1f}" for v in box)}]')
    return boxes, scores, labels


if __name__ == '__main__':
    main()
