"""Evaluating the deployed models on held-out images, with progress, labels and an accuracy floor.

Each evaluation prints its label and a progress bar (a val set takes tens of
seconds per model on a CPU); the evaluator's own report (mmdet's COCO tables,
mmseg's per-class table) is kept out of the output and lands in report.json.
Drops are given in points: mmdet's mAP is a fraction (0.353 is 35.3 points),
mmseg's mIoU a percentage already.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
from typing import Dict, List, Optional

import torch

from .compare import clip_to_image

DEFAULT_MAX_DROP = 1.0  # points

# metrics of each task's report, by short name
TASK_METRICS = {'Segmentation': ('mIoU',), 'instances': ('bbox_mAP', 'segm_mAP'),
                'ObjectDetection': ('bbox_mAP',)}


class AccuracyDropError(RuntimeError):
    """A lower-precision model lost more accuracy than ``--max-drop`` allows."""


def metric_names(task: str, has_masks: bool = False) -> tuple:
    return TASK_METRICS['instances' if task == 'ObjectDetection' and has_masks else task]


@contextlib.contextmanager
def _quiet_evaluator():
    """Keep the evaluator's tables (stdout and mmengine's INFO log) out of the output."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def evaluate_model(model, cfg, dataloader, label: Optional[str] = None) -> dict:
    """Metrics of ``model.test_step`` over the data set, with the config's val evaluator.

    Boxes are clipped to their image first (:func:`~mmrep.deploy.compare.clip_to_image`;
    a no-op for PyTorch's). With ``label``, prints it and a progress bar.
    """
    from mmengine.evaluator import Evaluator
    from mmengine.utils import ProgressBar
    evaluator_cfg = cfg.get('val_evaluator') or cfg.get('test_evaluator')
    with _quiet_evaluator():  # CocoMetric prints while it reads its annotation file
        evaluator = Evaluator(copy.deepcopy(evaluator_cfg))
    evaluator.dataset_meta = dataloader.dataset.metainfo
    total = len(dataloader.dataset)
    progress = None
    if label:
        print(f'{label}: evaluating on {total} held-out images', flush=True)
        progress = ProgressBar(total)
    with torch.no_grad():
        for batch in dataloader:
            outputs = model.test_step(batch)
            for sample in outputs:  # deployed detectors: boxes into the image, as mmdet
                clip_to_image(sample)
            evaluator.process(outputs, batch)
            if progress is not None:
                progress.update()
    if progress is not None:
        print(flush=True)
    with _quiet_evaluator():
        return evaluator.evaluate(total)


def metric_value(metrics: dict, name: str) -> Optional[float]:
    """``bbox_mAP`` from ``coco/bbox_mAP``, ``mIoU`` from ``mIoU``.

    mmdet's CocoMetric returns nothing when the model detected nothing: that is
    mAP 0. A metric missing from a non-empty result is None (not computed).
    """
    for key, value in metrics.items():
        if key.split('/')[-1] == name:
            return float(value)
    return 0.0 if not metrics else None


def points(name: str, value: float) -> float:
    """A metric value (or difference) in points: mAP x100; mmseg's mIoU is a percentage already."""
    return value if name.startswith('mIoU') or name.startswith('mAcc') or name.startswith('aAcc') \
        else 100.0 * value


def summarize(section: dict, names, models: Dict[str, str], reference: str, lowered: str) -> None:
    """Put ``{name}_{kind}`` and ``{name}_drop`` (reference - lowered, metric units) in ``section``.

    ``models``: kind -> its metrics dict key in ``section['metrics']``.
    """
    for name in names:
        for kind in models:
            section[f'{name}_{kind}'] = metric_value(section['metrics'][kind], name)
        high, low = section.get(f'{name}_{reference}'), section.get(f'{name}_{lowered}')
        if lowered != reference and high is not None and low is not None:
            section[f'{name}_drop'] = high - low
            section[f'{name}_drop_points'] = round(points(name, high - low), 2)


def print_summary(section: dict, names, labels: Dict[str, str], reference: str, lowered: str,
                  images: str) -> None:
    """One labelled line per model and metric, and the drop in points, rounded."""
    for name in names:
        print(f'{name} (points) on {images}:')
        for kind, label in labels.items():
            value = section.get(f'{name}_{kind}')
            shown = 'n/a' if value is None else f'{points(name, value):.1f}'
            print(f'  {label:<26} {shown}')
        drop = section.get(f'{name}_drop_points')
        if drop is not None:
            print(f'  drop {labels[reference]} -> {labels[lowered]}: {drop:.1f} points')


def check_accuracy_floor(section: dict, names, max_drop: Optional[float],
                         reference_label: str, lowered_label: str) -> List[str]:
    """Errors for every metric whose drop exceeds ``max_drop`` points (None: no floor)."""
    section['max_drop_points'] = max_drop
    errors = []
    if max_drop is None:
        return errors
    for name in names:
        drop = section.get(f'{name}_drop')
        if drop is not None and points(name, drop) > max_drop:
            errors.append(f'{name} fell {points(name, drop):.1f} points from {reference_label} to '
                          f'{lowered_label}, more than --max-drop {max_drop:g}')
    return errors


def evaluate_models(section: dict, cfg, split, task: str, has_masks: bool, models: Dict,
                    labels: Dict[str, str], reference: str, lowered: str,
                    max_drop: Optional[float]) -> List[str]:
    """Evaluate ``models`` (kind -> model) on ``split.evaluation``; fill and print ``section``.

    Puts each model's metrics in ``section['metrics']``, ``{name}_{kind}``
    values and the ``reference`` -> ``lowered`` drop in ``section``, prints
    the labelled summary, and returns the accuracy-floor errors (also in
    ``section['accuracy_errors']``; none when ``lowered == reference``).
    """
    names = metric_names(task, has_masks)
    section['metrics'] = {}
    for step, (kind, model) in enumerate(models.items(), 1):
        section['metrics'][kind] = evaluate_model(
            model, cfg, split.evaluation, f'[{step}/{len(models)}] {labels[kind]}')
    summarize(section, names, models, reference, lowered)
    print_summary(section, names, {k: labels[k] for k in models}, reference, lowered,
                  f'{len(split.evaluation_ids)} held-out images')
    errors = [] if lowered == reference else check_accuracy_floor(
        section, names, max_drop, labels[reference], labels[lowered])
    section['accuracy_errors'] = errors
    return errors
