"""Agreement between PyTorch and onnxruntime predictions (mmdet / mmseg data samples)."""
from __future__ import annotations

import numpy as np
import torch


# coordinates (pixels) within which two boxes without area are the same box
EQUAL_BOX_PX = 1e-3


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of ``box`` with each of ``boxes``; two boxes without area (a box clipped to the image
    edge, as an untrained head's often is) count as overlapping fully when they are equal."""
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area(box) + area(boxes) - inter
    equal = np.abs(boxes - box).max(1) <= EQUAL_BOX_PX
    return np.where(union > 1e-9, inter / np.maximum(union, 1e-9), equal.astype(float))


def _match(ref, test, top_k):
    """Pairs (i, j): each of ref's ``top_k`` best detections and the test
    detection of the same label it overlaps most. The whole test set is
    searched because near-equal scores may swap ranks across the top-k border.
    """
    ref_boxes, ref_labels = _np(ref.bboxes), _np(ref.labels)
    test_boxes, test_labels = _np(test.bboxes), _np(test.labels)
    order = np.argsort(-_np(ref.scores), kind='stable')[:top_k]
    pairs, unmatched = [], 0
    for i in order:
        same = np.flatnonzero(test_labels == ref_labels[i])
        if not len(same):
            unmatched += 1
            continue
        ious = _iou(ref_boxes[i], test_boxes[same])
        if ious.max() < 0.5:
            unmatched += 1
            continue
        pairs.append((i, same[ious.argmax()], float(ious.max())))
    return pairs, unmatched


def compare_detections(ref, test, top_k: int = 20) -> dict:
    """Figures for ``pred_instances`` of PyTorch (``ref``) vs the backend (``test``)."""
    pairs, unmatched = _match(ref, test, top_k)
    box_diff = [float(np.abs(_np(ref.bboxes)[i] - _np(test.bboxes)[j]).max()) for i, j, _ in pairs]
    score_diff = [abs(float(_np(ref.scores)[i]) - float(_np(test.scores)[j])) for i, j, _ in pairs]
    return dict(
        torch_count=int(len(ref.bboxes)), onnx_count=int(len(test.bboxes)),
        compared=len(pairs) + unmatched, matched=len(pairs), unmatched=unmatched,
        min_iou=min((p[2] for p in pairs), default=None),
        max_box_abs_diff=max(box_diff, default=None),
        max_score_abs_diff=max(score_diff, default=None),
        _pairs=pairs)


def compare_instances(ref, test, top_k: int = 20) -> dict:
    """Detection figures plus the IoU of the matched instance masks."""
    report = compare_detections(ref, test, top_k)
    ref_masks, test_masks = _np(ref.masks).astype(bool), _np(test.masks).astype(bool)
    ious = []
    for i, j, _ in report['_pairs']:
        union = np.logical_or(ref_masks[i], test_masks[j]).sum()
        inter = np.logical_and(ref_masks[i], test_masks[j]).sum()
        ious.append(1.0 if union == 0 else float(inter / union))
    report.update(min_mask_iou=min(ious, default=None),
                  mean_mask_iou=float(np.mean(ious)) if ious else None)
    return report


def compare_segmentation(ref, test) -> dict:
    """Share of pixels where PyTorch and the backend predict the same class."""
    a, b = _np(ref.data).squeeze(), _np(test.data).squeeze()
    if a.shape != b.shape:
        return dict(shape_torch=list(a.shape), shape_onnx=list(b.shape), pixel_agreement=0.0)
    return dict(pixels=int(a.size), pixel_agreement=float((a == b).mean()))


def compare_segmentation_logits(ref, test) -> dict:
    """PyTorch (``ref``) and backend (``test``) class logits ``(N, C, H, W)`` of one input.

    Argmax labels alone cannot tell a real export difference from ties: an
    untrained head gives near-equal logits, and any rounding difference flips
    their argmax. A pixel's argmax can only flip where its top-1/top-2 gap is at
    most ``2 * logits_max_abs_diff``, so when the logits agree every flip is a
    tie; ``flip_max_margin`` (the largest gap among flipped pixels) shows it.
    """
    a, b = _np(ref).astype(np.float64), _np(test).astype(np.float64)
    if a.shape != b.shape:
        return dict(logits_shape_torch=list(a.shape), logits_shape_onnx=list(b.shape),
                    logits_rel_diff=float('inf'))
    diff = float(np.abs(a - b).max())
    scale = max(float(np.abs(a).max()), 1e-12)
    top2 = np.sort(a, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    flips = a.argmax(1) != b.argmax(1)
    flip_margin = float(margin[flips].max()) if flips.any() else None
    return dict(logits_shape=list(a.shape), logits_max_abs_diff=diff, logits_scale=scale,
                logits_rel_diff=diff / scale, logit_argmax_agreement=float(1 - flips.mean()),
                logit_argmax_flips=int(flips.sum()), flip_max_margin=flip_margin,
                median_top2_margin=float(np.median(margin)))


def _boxes_and_clipped(sample):
    """A detection data sample's boxes and a copy clipped to its original image; None without."""
    instances = getattr(sample, 'pred_instances', None)
    if instances is None or 'bboxes' not in instances or 'ori_shape' not in sample.metainfo:
        return None
    height, width = sample.metainfo['ori_shape'][:2]
    boxes = instances.bboxes
    clipped = boxes.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, height)
    return boxes, clipped


def boxes_within_image(sample) -> bool:
    """Do all of a detection data sample's boxes lie within its original image?"""
    pair = _boxes_and_clipped(sample)
    return pair is None or torch.equal(*pair)


def clip_to_image(sample) -> int:
    """Clip a detection data sample's boxes to its original image, in place; returns how many changed.

    mmdet clips boxes to the resized image before rescaling them. mmdeploy's
    static-shape graphs clip to the network input, which includes the padding to
    ``pad_size_divisor``: a box can reach into the padding, past the image's
    bottom or right edge (on a 640x426 image read at 128x85 and padded to 96,
    up to y=481). The graph cannot know the image size of a later input, so the
    host clips, as mmdet does. A sample without boxes is left as it is.
    """
    pair = _boxes_and_clipped(sample)
    if pair is None:
        return 0
    boxes, clipped = pair
    sample.pred_instances.bboxes = clipped
    return int((clipped != boxes).any(dim=1).sum())


def compare_predictions(task: str, ref, test, top_k: int = 20) -> dict:
    """Agreement of two models' data samples of one image (``ref`` as the reference).

    ``task`` is mmdeploy's task type: segmentation compares labels; detection
    boxes, scores and labels of ``ref``'s ``top_k`` detections, and masks when
    both have them.
    """
    if task == 'Segmentation':
        return compare_segmentation(ref.pred_sem_seg, test.pred_sem_seg)
    if 'masks' in ref.pred_instances and 'masks' in test.pred_instances:
        cmp = compare_instances(ref.pred_instances, test.pred_instances, top_k)
    else:
        cmp = compare_detections(ref.pred_instances, test.pred_instances, top_k)
    cmp.pop('_pairs', None)
    return cmp
