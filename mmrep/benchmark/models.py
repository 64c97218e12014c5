"""What the benchmark times: a table of model specs, and how each becomes a network and inputs.

A :class:`ModelSpec` is data: a backbone's registry dict, or a config (an
mmrep config name, ``pkg::path`` or a file) for necks and whole models, an
optional timm model for twins, and ``peers``: other specs timed in the same
interleaved group so that their ratios are paired. Adding a family is a few
lines in ``MODEL_SPECS``; :func:`spec_from_config` makes a spec of any
detector or segmentor config (``tools/benchmark.py --config``).

Whole models run as networks (``mode='tensor'``: backbone, neck and head; no
box decoding or NMS) at the input their config's test pipeline makes
(:func:`config_input_size`).
"""
from __future__ import annotations

import copy
import os.path as osp
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

KINDS = ('backbone', 'neck', 'detector', 'segmentor', 'timm')
WHOLE_MODEL_KINDS = ('detector', 'segmentor')
# a typical COCO image (640x480 is its most common size): the source image when
# the config's own test images cannot be read
DEFAULT_IMAGE_SIZE = (480, 640)
NECK_STRIDES = (4, 8, 16, 32)


def _timm_features(model: nn.Module, x: torch.Tensor):
    return model.forward_features(x)


def _timm_repghostnet_without_final_conv(model: nn.Module, x: torch.Tensor):
    # timm's forward_features ends with the 160->960 1x1 ConvBnAct (its blocks[-1]), a
    # head conv that mmrep's RepGhostNet backbone leaves out: the twin stops before it
    return model.blocks[:-1](model.act1(model.bn1(model.conv_stem(x))))


# how a timm twin runs so that it does the same work as the mmrep backbone
TIMM_FORWARDS: Dict[str, Callable] = {
    'features': _timm_features,
    'repghostnet_without_final_conv': _timm_repghostnet_without_final_conv,
}


@dataclass(frozen=True)
class ModelSpec:
    """One model of the benchmark (JSON-serializable: the memory child rebuilds it)."""
    name: str
    kind: str
    model: Optional[dict] = None        # backbone: its registry dict (mmdet's MODELS)
    config: Optional[str] = None        # neck / whole model: 'mmrep::configs/x.py', a file
    changes: Optional[dict] = None      # merged into the config's ``model``
    cfg_options: Optional[dict] = None  # merged into the config (``--cfg-options``)
    checkpoint: Optional[str] = None
    timm: Optional[str] = None          # kind 'timm': the timm model name
    timm_forward: str = 'features'
    reference: bool = False             # a stock model: nothing to fuse
    peers: Tuple[str, ...] = ()         # specs timed in the same interleaved group
    image: Optional[Tuple[int, int]] = None  # source image (H, W) when the test set is absent

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f'{self.name}: kind must be one of {KINDS}, got {self.kind!r}')
        if self.kind == 'backbone' and not self.model:
            raise ValueError(f'{self.name}: a backbone spec needs model=dict(type=...)')
        if self.kind in ('neck',) + WHOLE_MODEL_KINDS and not self.config:
            raise ValueError(f'{self.name}: a {self.kind} spec needs config=')
        if self.kind == 'timm' and not self.timm:
            raise ValueError(f'{self.name}: a timm spec needs timm=<model name>')
        if self.timm_forward not in TIMM_FORWARDS:
            raise ValueError(f'{self.name}: timm_forward must be one of {list(TIMM_FORWARDS)}')

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, (), False)}

    @classmethod
    def from_dict(cls, data: dict) -> 'ModelSpec':
        data = dict(data)
        data['peers'] = tuple(data.get('peers', ()))
        if data.get('image'):
            data['image'] = tuple(data['image'])
        return cls(**data)


def backbone_rows(name: str, model: dict, timm: Optional[str] = None,
                  timm_forward: str = 'features') -> List[ModelSpec]:
    """An mmrep backbone and, with ``timm``, its timm twin as a peer (``'<name> (timm)'``)."""
    if timm is None:
        return [ModelSpec(name, 'backbone', model=model)]
    twin = ModelSpec(f'{name} (timm)', 'timm', timm=timm, timm_forward=timm_forward,
                     reference=True)
    return [ModelSpec(name, 'backbone', model=model, peers=(twin.name,)), twin]


# mmrep.datasets.shapes draws 256x256 images
SHAPES_IMAGE = (256, 256)
_REPVGG_A0_REPPAFPN = dict(type='RepPAFPN', in_channels=[48, 96, 192, 1280], out_channels=256,
                           start_level=1, add_extra_convs='on_input', num_outs=5)

MODEL_SPECS: Dict[str, ModelSpec] = {spec.name: spec for spec in [
    *backbone_rows('RepVGG-A0', dict(type='RepVGG', arch='A0'), timm='repvgg_a0'),
    *backbone_rows('RepVGG-B1g4', dict(type='RepVGG', arch='B1g4'), timm='repvgg_b1g4'),
    *backbone_rows('RepGhostNet-1.0x', dict(type='RepGhostNet', widen_factor=1.0),
                   timm='repghostnet_100', timm_forward='repghostnet_without_final_conv'),
    *backbone_rows('OREPA-ResNet-18', dict(type='OREPAResNet', depth=18)),
    *backbone_rows('OREPA-ResNet-50', dict(type='OREPAResNet', depth=50)),
    *backbone_rows('RepLKNet-31B', dict(type='RepLKNet', arch='31B')),
    *backbone_rows('MobileOne-S0', dict(type='MobileOne', arch='s0'), timm='mobileone_s0'),
    *backbone_rows('RepViT-M1.1', dict(type='RepViT', arch='m1.1'), timm='repvit_m1_1'),
    # RepPAFPN alone: the neck of that config, fed RepGhostNet-1.0x's feature maps
    ModelSpec('RepPAFPN', 'neck', config='mmrep::configs/retinanet_repghost_reppafpn_1x.py'),
    ModelSpec('RetinaNet-RepGhost', 'detector', config='mmrep::configs/retinanet_repghost_1x.py'),
    ModelSpec('RetinaNet-RepVGG-A0+RepPAFPN', 'detector',
              config='mmrep::configs/retinanet_repvgg-a0_1x.py',
              changes=dict(neck=_REPVGG_A0_REPPAFPN)),
    ModelSpec('UPerNet-RepLKNet-31B', 'segmentor',
              config='mmrep::configs/upernet_replknet-31b_ade20k.py'),
    ModelSpec('RetinaNet-R18 (mmdet)', 'detector',
              config='mmdet::retinanet/retinanet_r18_fpn_1x_coco.py', reference=True),
    ModelSpec('RetinaNet-R50 (mmdet)', 'detector',
              config='mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', reference=True),
    # the speed-built detector and its stock reference, timed together (paired)
    ModelSpec('RetinaNet-RepVGG-A0-slim (shapes)', 'detector',
              config='mmrep::configs/retinanet_repvgg-a0_reppafpn-slim_shapes.py',
              peers=('RetinaNet-R18 (shapes)',), image=SHAPES_IMAGE),
    ModelSpec('RetinaNet-R18 (shapes)', 'detector',
              config='mmrep::configs/retinanet_r18_shapes_baseline.py', reference=True,
              image=SHAPES_IMAGE),
]}


def default_model_names() -> List[str]:
    """Every spec that is not timed as another spec's peer anyway."""
    as_peer = {p for spec in MODEL_SPECS.values() for p in spec.peers}
    return [name for name in MODEL_SPECS if name not in as_peer]


def get_spec(name: str, specs: Optional[Dict[str, ModelSpec]] = None) -> ModelSpec:
    specs = MODEL_SPECS if specs is None else specs
    if name not in specs:
        raise KeyError(f'unknown model {name!r}; choose from: {", ".join(specs)}')
    return specs[name]


# --------------------------------------------------------------------------- configs

def load_config(spec: ModelSpec):
    from mmengine.config import Config
    from mmengine.hub import get_config
    import mmrep  # noqa: F401  (registers the mmrep:: config scope)
    path = spec.config
    if '::' in path:
        cfg = get_config(path)
    elif osp.isfile(path):
        cfg = Config.fromfile(path)
    else:
        raise FileNotFoundError(f'config {path!r} not found (a file, or a name such as '
                                "'mmrep::configs/retinanet_repghost_1x.py')")
    if spec.changes:
        cfg.merge_from_dict({f'model.{k}': v for k, v in spec.changes.items()})
    if spec.cfg_options:
        cfg.merge_from_dict(spec.cfg_options)
    return cfg


def whole_model_kind(cfg) -> str:
    """``'detector'`` or ``'segmentor'`` for the config's model; ValueError otherwise."""
    if cfg.get('model') is None:
        raise ValueError('the config defines no model')
    from mmrep.engine.deploy_utils import resolve_model_type
    cls = resolve_model_type(cfg.model.get('type'))
    from mmdet.models.detectors import BaseDetector
    from mmseg.models.segmentors import BaseSegmentor
    if cls is not None and issubclass(cls, BaseDetector):
        return 'detector'
    if cls is not None and issubclass(cls, BaseSegmentor):
        return 'segmentor'
    raise ValueError(f"the config's model type {cfg.model['type']!r} is neither an mmdet "
                     'detector nor an mmseg segmentor: the benchmark times whole models '
                     'from configs (and backbones from its own table)')


_SIZE_STEPS = ('Resize', 'FixShapeResize', 'Pad')


def config_input_size(cfg, image_hw: Sequence[int]) -> Tuple[int, int]:
    """The network input (H, W) the config's test pipeline makes of an ``image_hw`` image.

    Runs the pipeline's own resize and pad transforms on a blank image of that
    size, then pads as the model's data preprocessor does at test time
    (mmdet ``pad_size_divisor``; mmseg ``test_cfg`` ``size``/``size_divisor``).
    A keep-ratio ``Resize(scale=(1333, 800))`` turns a 480x640 image into
    800x1067, padded to 800x1088.
    """
    from mmengine.registry import TRANSFORMS, init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    source = cfg.get('test_dataloader') or cfg.get('val_dataloader')
    pipeline = (source or {}).get('dataset', {}).get('pipeline', [])
    steps = [s for s in pipeline if s.get('type') in _SIZE_STEPS]
    if not any('Resize' in s['type'] for s in steps):
        raise ValueError('the config has no Resize in its test pipeline, so no test size: '
                         'give the network input with --input-size H W')
    h, w = (int(v) for v in image_hw)
    results = dict(img=np.zeros((h, w, 3), np.uint8), img_shape=(h, w), ori_shape=(h, w))
    for step in steps:
        results = TRANSFORMS.build(copy.deepcopy(step))(results)
    h, w = results['img'].shape[:2]
    pre = cfg.model.get('data_preprocessor') or {}
    test_cfg = pre.get('test_cfg') or {}
    if test_cfg.get('size'):
        h, w = max(h, test_cfg['size'][0]), max(w, test_cfg['size'][1])
    divisor = pre.get('pad_size_divisor') or test_cfg.get('size_divisor') or 1
    return -(-h // divisor) * divisor, -(-w // divisor) * divisor


def first_test_image_size(cfg) -> Optional[Tuple[int, int]]:
    """(H, W) of the first image of the config's test set, or None where it cannot be read."""
    try:
        from PIL import Image
        from mmengine.registry import DATASETS, init_default_scope
        init_default_scope(cfg.get('default_scope', 'mmdet'))
        source = cfg.get('test_dataloader') or cfg.get('val_dataloader')
        dataset = DATASETS.build(dict(copy.deepcopy(source['dataset']), serialize_data=False))
        with Image.open(dataset.get_data_info(0)['img_path']) as image:
            w, h = image.size
        return h, w
    except Exception:  # no data on this machine: the caller falls back and says so
        return None


# --------------------------------------------------------------------------- building

class Flatten(nn.Module):
    """``call(module, *inputs)`` returning a flat tuple of tensors (what ONNX export wants)."""

    def __init__(self, module: nn.Module, call: Callable):
        super().__init__()
        self.module = module
        self._call = call

    def forward(self, *inputs):
        return tuple(flat_tensors(self._call(self.module, *inputs)))


def flat_tensors(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for item in out for t in flat_tensors(item)]


@dataclass
class Case:
    """A spec made runnable: ``model(*inputs)`` (unfused), how to fuse it, what was chosen."""
    spec: ModelSpec
    model: nn.Module
    inputs: Tuple[torch.Tensor, ...]
    image: List[int]                 # the image size the input stands for
    input_from: str                  # how the input size was chosen
    fuse: Callable[[nn.Module], nn.Module]
    already_fused: bool = False      # a fused checkpoint: no unfused model exists
    notes: List[str] = field(default_factory=list)


def _build_from_config(cfg) -> nn.Module:
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(copy.deepcopy(cfg.model))  # no init_weights(): nothing downloaded
    return revert_sync_batchnorm(model).eval()


def _mmrep_fuse(module: nn.Module) -> nn.Module:
    import mmrep
    return mmrep.reparameterize_model(module, inplace=True)


def _timm_fuse(module: nn.Module) -> nn.Module:
    from timm.utils.model import reparameterize_model
    return reparameterize_model(module, inplace=True)


def _no_fuse(module: nn.Module) -> nn.Module:
    return module


def _load_whole_model(spec: ModelSpec, cfg) -> Tuple[nn.Module, bool, List[str]]:
    """The unfused model with the checkpoint loaded; a fused checkpoint gives the fused model."""
    model = _build_from_config(cfg)
    if not spec.checkpoint:
        return model, False, []
    from mmrep.engine.deploy_utils import CheckpointMismatchError, fused_config, load_checked
    try:
        load_checked(model, spec.checkpoint)
        return model, False, []
    except CheckpointMismatchError as unfused_error:
        try:
            fused = _build_from_config(fused_config(cfg))
        except ValueError:  # nothing in the config to fuse: the first error stands
            raise unfused_error
        try:
            load_checked(fused, spec.checkpoint)
        except CheckpointMismatchError:
            raise unfused_error
        return fused, True, [f'{spec.checkpoint} is a fused checkpoint: only fused paths run']


def input_size_for(cfg, input_size: Optional[Sequence[int]],
                   image_size: Optional[Sequence[int]],
                   fallback_image: Optional[Sequence[int]] = None
                   ) -> Tuple[Tuple[int, int], List[int], str]:
    """``((H, W) of the input, image size, how it was chosen)`` for a whole model.

    The source image: ``image_size``, else the first image of the config's
    test set, else ``fallback_image``, else 480x640.
    """
    if input_size:
        h, w = input_size
        return (h, w), [h, w], 'given (--input-size)'
    if image_size:
        image, origin = tuple(image_size), 'a given image size (--image-size)'
    else:
        first = first_test_image_size(cfg)
        if first:
            image, origin = first, "the first image of the config's test set"
        elif fallback_image:
            image, origin = tuple(fallback_image), "its data set's image size"
        else:
            image, origin = DEFAULT_IMAGE_SIZE, 'a COCO-sized image (the test set is not on disk)'

    hw = config_input_size(cfg, image)
    return hw, list(image), (f"the config's test pipeline on {origin}, "
                             f'{image[0]}x{image[1]} -> {hw[0]}x{hw[1]}')


def build_case(spec: ModelSpec, batch: int = 1, size: Sequence[int] = (224, 224),
               input_size: Optional[Sequence[int]] = None,
               image_size: Optional[Sequence[int]] = None, seed: int = 0) -> Case:
    """Build ``spec`` (eval mode, seeded random weights unless a checkpoint) and its inputs.

    ``size``: the image of backbones and timm twins (a neck gets a backbone's
    feature maps of it). Whole models: ``input_size`` if given, else their
    config's test size of ``image_size`` (default: the first test image, else 480x640).
    """
    if batch < 1:
        raise ValueError(f'batch must be at least 1, got {batch}')
    torch.manual_seed(seed)
    h, w = size
    if spec.kind == 'backbone':
        from mmdet.registry import MODELS
        import mmrep  # noqa: F401  (registers the backbones)
        model = MODELS.build(copy.deepcopy(spec.model)).eval()
        return Case(spec, Flatten(model, lambda m, x: m(x)), (torch.rand(batch, 3, h, w),),
                    [h, w], 'given (--size)', _no_fuse if spec.reference else _mmrep_fuse)
    if spec.kind == 'timm':
        import timm
        forward = TIMM_FORWARDS[spec.timm_forward]
        # no classifier: the twin runs features only, and holds no unused head weights
        model = timm.create_model(spec.timm, pretrained=False, num_classes=0).eval()
        return Case(spec, Flatten(model, forward), (torch.rand(batch, 3, h, w),), [h, w],
                    'given (--size)', _timm_fuse)
    cfg = load_config(spec)
    fuse = _no_fuse if spec.reference else _mmrep_fuse
    if spec.kind == 'neck':
        neck = _build_from_config(cfg).neck
        feats = tuple(torch.rand(batch, c, h // s, w // s)
                      for c, s in zip(neck.in_channels, NECK_STRIDES))
        return Case(spec, Flatten(neck, lambda m, *f: m(f)), feats, [h, w],
                    'feature maps of a --size image', fuse)
    (ih, iw), image, origin = input_size_for(cfg, input_size, image_size, spec.image)
    model, already_fused, notes = _load_whole_model(spec, cfg)
    return Case(spec, Flatten(model, lambda m, x: m(x, mode='tensor')),
                (torch.rand(batch, 3, ih, iw),), image, origin, fuse, already_fused, notes)


def spec_from_config(config: str, checkpoint: Optional[str] = None,
                     cfg_options: Optional[dict] = None, name: Optional[str] = None) -> ModelSpec:
    """A spec for a user's detector or segmentor config (and checkpoint)."""
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint!r} not found')
    probe = ModelSpec(name or 'config', 'detector', config=config, cfg_options=cfg_options)
    kind = whole_model_kind(load_config(probe))
    base = osp.splitext(osp.basename(config.split('::')[-1]))[0]
    return replace(probe, name=name or base, kind=kind, checkpoint=checkpoint)
