"""Which images calibrate an INT8 model and which evaluate it: never the same ones.

Calibrating on images and then evaluating on them too makes the accuracy drop
look smaller than it is. :func:`held_out_split` therefore picks the
calibration images from

* ``'train'`` (the default): the model config's training set, read through the
  val set's test pipeline (no augmentation); the whole val set evaluates; or
* ``'val'``: N val images, spread evenly over the set, which are then left out
  of the evaluation (for configs whose training data is not at hand).

Both read images exactly as evaluation does: the data set's test pipeline, then
the model's data preprocessor. The split records the images of both parts (their
file names) for the report.

:func:`check_static_inputs` runs every image the run will feed through that
path before any export or quantization work and refuses, naming the images,
those that do not reach a static-shape graph's input size.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os.path as osp
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np
import torch

DEFAULT_CALIB_IMAGES = 32
CALIB_SOURCES = ('train', 'val')


class DeployInputError(ValueError):
    """The deploy run cannot work on this input (no images, images of the wrong size, ...)."""


class Int8InputError(DeployInputError):
    """The INT8 path cannot run on this input (no calibration images, unsupported task, ...)."""


def _val_loader_cfg(cfg) -> dict:
    source = cfg.get('val_dataloader') or cfg.get('test_dataloader')
    if not source or 'dataset' not in source:
        raise DeployInputError('the model config has no val_dataloader or test_dataloader '
                               'with a dataset to evaluate on')
    return source


def _describe(dataset_cfg: dict) -> str:
    root = dataset_cfg.get('data_root', '')
    ann = dataset_cfg.get('ann_file', '')
    prefix = dataset_cfg.get('data_prefix', '')
    return f'{dataset_cfg.get("type", "?")}(data_root={root!r}, ann_file={ann!r}, data_prefix={prefix!r})'


def _train_dataset_cfg(cfg, pipeline: list, error=Int8InputError) -> dict:
    """The innermost training data set of the config, with ``pipeline`` (the test pipeline)."""
    source = cfg.get('train_dataloader')
    if not source or 'dataset' not in source:
        raise error('the model config has no train_dataloader with a dataset to calibrate on; '
                    'pass --calib-from val to calibrate on val images left out of the evaluation')
    dataset = copy.deepcopy(source['dataset'])
    while 'dataset' in dataset:  # RepeatDataset, ClassBalancedDataset, MultiImageMixDataset, ...
        dataset = dataset['dataset']
    if 'datasets' in dataset:
        raise error(f"the training set is a {dataset.get('type')} of several data sets; "
                    'pass --calib-from val to calibrate on val images left out of the evaluation')
    # the test pipeline (no augmentation); every image, as at test time (no training filter)
    dataset.update(pipeline=copy.deepcopy(pipeline), test_mode=True)
    return dataset


def build_dataset(dataset_cfg: dict, what: str, error=DeployInputError, advice: str = ''):
    """Build a data set (unserialized: one process reads it); refuse an empty one."""
    from mmengine.registry import DATASETS
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints while loading
            dataset = DATASETS.build(dict(copy.deepcopy(dataset_cfg), serialize_data=False))
    except FileNotFoundError as exc:
        raise error(f'the {what} cannot be read: {exc} ({_describe(dataset_cfg)}){advice}') from exc
    if len(dataset) == 0:
        raise error(f'the {what} has no images ({_describe(dataset_cfg)}){advice}')
    return dataset


def image_id(dataset, index: int) -> str:
    """The image's file name: unique within a set, and it tells a training image from a
    val image where numeric ids do not (the shapes sets both count from 1)."""
    info = dataset.get_data_info(index)
    return osp.basename(info.get('img_path', str(info.get('img_id', index))))


def image_path(dataset, index: int) -> str:
    info = dataset.get_data_info(index)
    return osp.abspath(info.get('img_path', ''))


def spread_indices(count: int, size: int) -> List[int]:
    """``count`` indices spread evenly over ``range(size)`` (all of them when ``count >= size``)."""
    if count >= size:
        return list(range(size))
    return sorted({int(round(i)) for i in np.linspace(0, size - 1, count)})


def one_image_loader(loader_cfg: dict, dataset):
    """A data loader over ``dataset``: one image per batch, in order, in this process."""
    from mmengine.runner import Runner
    loader = dict(copy.deepcopy({k: v for k, v in loader_cfg.items() if k != 'dataset'}),
                  dataset=dataset, batch_size=1, num_workers=0, persistent_workers=False,
                  sampler=dict(type='DefaultSampler', shuffle=False))
    return Runner.build_dataloader(loader)


@dataclass
class HeldOutSplit:
    """Calibration and evaluation images of one run (disjoint)."""
    calibration: object  # DataLoader, or None without calibration
    evaluation: object  # DataLoader, or None without evaluation
    calibration_ids: list = field(default_factory=list)
    evaluation_ids: list = field(default_factory=list)
    calibration_source: str = ''  # 'train' or 'val'
    description: str = ''

    def report(self) -> dict:
        return dict(calibration_source=self.calibration_source,
                    calibration_images=len(self.calibration_ids),
                    calibration_image_ids=list(self.calibration_ids),
                    eval_images=len(self.evaluation_ids),
                    eval_image_ids=list(self.evaluation_ids),
                    images_used=self.description)


def held_out_split(cfg, calib_images: Optional[int] = DEFAULT_CALIB_IMAGES,
                   calib_from: str = 'train', evaluate: bool = True) -> HeldOutSplit:
    """Pick disjoint calibration (``calib_images`` of ``calib_from``) and evaluation images.

    ``calib_images=None``: no calibration (an fp32/bf16 evaluation only).
    ``evaluate=False``: no evaluation set.
    """
    if calib_images is not None:
        if calib_from not in CALIB_SOURCES:
            raise Int8InputError(f'--calib-from must be one of {", ".join(CALIB_SOURCES)}, '
                                 f'got {calib_from!r}')
        if calib_images < 1:
            raise Int8InputError(f'--calib-images must be at least 1, got {calib_images}')
    val_cfg = _val_loader_cfg(cfg)
    error = Int8InputError if calib_images is not None else DeployInputError
    val = build_dataset(val_cfg['dataset'], 'val/test data set of the model config', error)
    val_indices = list(range(len(val)))
    split = HeldOutSplit(None, None)
    if calib_images is not None:
        if calib_from == 'train':
            train_cfg = _train_dataset_cfg(cfg, val_cfg['dataset'].get('pipeline', []))
            train = build_dataset(train_cfg, 'training set of the model config', Int8InputError,
                                  '; pass --calib-from val to calibrate on val images left out '
                                  'of the evaluation')
            chosen = spread_indices(calib_images, len(train))
            val_paths = {image_path(val, i) for i in val_indices} if evaluate else set()
            shared = [image_path(train, i) for i in chosen if image_path(train, i) in val_paths]
            if shared:
                raise Int8InputError(
                    f'{len(shared)} of the {len(chosen)} calibration images of the training set '
                    f'are val images too (e.g. {shared[0]}): the evaluation would not be held out; '
                    'pass --calib-from val to calibrate on val images left out of the evaluation')
            split.calibration_ids = [image_id(train, i) for i in chosen]
            total = len(train)
            train.get_subset_(chosen)
            split.calibration = one_image_loader(cfg.get('train_dataloader'), train)
            split.description = (f'calibration: {len(chosen)} of the {total} training images '
                                 f'({_describe(train_cfg)}), spread over the set, read through the '
                                 f'test pipeline; evaluation: the {len(val)} val images')
        else:
            if evaluate and calib_images >= len(val):
                raise Int8InputError(
                    f'--calib-from val with --calib-images {calib_images} leaves none of the '
                    f'{len(val)} val images to evaluate on: calibrate on fewer images')
            chosen = spread_indices(calib_images, len(val))
            val_indices = [i for i in val_indices if i not in set(chosen)]
            split.calibration_ids = [image_id(val, i) for i in chosen]
            calib_set = build_dataset(val_cfg['dataset'], 'val/test data set of the model config',
                                      Int8InputError)
            calib_set.get_subset_(chosen)
            split.calibration = one_image_loader(val_cfg, calib_set)
            split.description = (f'calibration: {len(chosen)} of the {len(val)} val images '
                                 f'({_describe(val_cfg["dataset"])}), spread over the set; '
                                 f'evaluation: the other {len(val_indices)}')
        split.calibration_source = calib_from
    elif evaluate:
        split.description = f'evaluation: the {len(val)} val images ({_describe(val_cfg["dataset"])})'
    if evaluate:
        split.evaluation_ids = [image_id(val, i) for i in val_indices]
        if len(val_indices) < len(val):
            val.get_subset_(val_indices)
        split.evaluation = one_image_loader(val_cfg, val)
    return split


class PreprocessedInputs:
    """Re-iterable ``{input name: array}`` feeds of a data loader's images.

    Each image goes through the data set's test pipeline and ``preprocess`` (the
    model's data preprocessor), lazily: large images are not all held in
    memory. ``len()`` is the number of images.
    """

    def __init__(self, dataloader, preprocess: Callable[[dict], torch.Tensor], input_name: str):
        self.dataloader, self.preprocess, self.input_name = dataloader, preprocess, input_name

    def __len__(self) -> int:
        return len(self.dataloader.dataset)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.dataloader:
            yield {self.input_name: self.preprocess(batch).numpy().astype(np.float32)}


def onnx_input(onnx_path: str):
    """Name and dims of the graph's first input; a dim is None where it is dynamic."""
    import onnx
    graph_input = onnx.load(onnx_path, load_external_data=False).graph.input[0]
    return graph_input.name, [d.dim_value if d.HasField('dim_value') else None
                              for d in graph_input.type.tensor_type.shape.dim]


def shape_mismatch(shape: Sequence[int], dims: Sequence[Optional[int]]) -> bool:
    return len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape))


def check_static_inputs(split: HeldOutSplit, preprocess: Callable[[dict], torch.Tensor],
                        dims: Sequence[int], error=Int8InputError, dynamic_config: str = '') -> int:
    """Refuse, before any export work, images that will not fit a static input of ``dims``.

    Every calibration and evaluation image is read as the run will read it.
    Returns how many images were checked.
    """
    bad, checked = [], 0
    for what, loader, ids in (('calibration', split.calibration, split.calibration_ids),
                              ('evaluation', split.evaluation, split.evaluation_ids)):
        if loader is None:
            continue
        for image, batch in zip(ids, loader):
            shape = list(preprocess(batch).shape)
            checked += 1
            if shape_mismatch(shape, dims):
                bad.append(f'{what} image {image}: {shape}')
    if bad:
        raise error(
            f'{len(bad)} of the {checked} images this run feeds do not reach the static input '
            f'{list(dims)} of the export through the test pipeline ({"; ".join(bad[:5])}'
            f'{"; ..." if len(bad) > 5 else ""}): export with a dynamic-shape deploy config '
            f'instead{" (" + dynamic_config + ")" if dynamic_config else ""}')
    return checked
