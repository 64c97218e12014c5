"""The ``Pretrained`` initializer of mmrep backbones: weights by name, any known layout, strict.

An mmrep backbone's ``init_cfg=dict(type='Pretrained', checkpoint=NAME,
prefix=None)`` runs :class:`StrictPretrainedInit` (registered in mmengine's
``WEIGHT_INITIALIZERS`` as ``'StrictPretrained'``):

1. :func:`mmrep.hub.fetch` gets the file behind NAME (``timm://``, URL,
   local path; other schemes through mmengine's loaders);
2. a conversion cached for this file (its sha256, the converter version)
   is used as it is; otherwise the file is loaded by the safe loader and
   unwrapped, and if its keys are not the backbone's own,
   :func:`mmrep.converters.auto.detect` finds its layout, arch and form,
   which must agree with the backbone's; it is converted and cached;
3. :func:`mmrep.models.pretrained.load_state_strict` loads it, refusing
   anything that does not fit, naming the keys.

When the backbone is built, :meth:`StrictPretrainedInit.check` already
refuses what it can tell without network access and without reading
weights: a timm name of another arch, a local (or already downloaded) file
of another arch, form or family. ``tools/train.py`` calls
:func:`prepare_pretrained` after building the runner, so that a download
that fails stops training before the data sets are loaded.
"""
from __future__ import annotations

import os.path as osp
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from mmengine.logging import print_log
from mmengine.model.weight_init import PretrainedInit, update_init_info
from mmengine.registry import WEIGHT_INITIALIZERS
from mmengine.runner.checkpoint import CheckpointLoader
from torch import Tensor, nn

from mmrep import hub
from mmrep.checkpoint import load_checkpoint_file
from mmrep.converters import auto, load_source
from mmrep.converters.common import Detection, fits_exactly, meta_state
from mmrep.models.pretrained import (PretrainedMismatchError, load_state_strict,
                                     optional_prefixes, refuse_mismatch)
from mmrep.models.unwrap import CheckpointLayoutError, unwrap_state_dict

INITIALIZER = 'StrictPretrained'


# ---------------------------------------------------------------- reading


def select_state(checkpoint, name: str, prefix: Optional[str],
                 ema: bool = False) -> Tuple[Dict[str, Tensor], dict]:
    """The backbone weights in a loaded checkpoint, and its ``meta``.

    Unwrapped by :func:`~mmrep.models.unwrap.unwrap_state_dict`: the weights
    mmengine would load (``state_dict``, else ``model``), or with ``ema`` the
    EMA weights (e.g. those the official RepGhostNet accuracies are of);
    without a DDP ``module.`` prefix; with ``prefix`` (``'backbone'``) only
    the keys under it, and without one a whole model's ``backbone.`` keys.
    """
    try:
        state = unwrap_state_dict(checkpoint, 'ema' if ema else 'saved', prefix or 'backbone',
                                  prefix_required=bool(prefix)).state
    except CheckpointLayoutError as error:
        raise PretrainedMismatchError(f'{name}: {error}') from None
    meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), Mapping) else {}
    return state, dict(meta)


def read_state_dict(checkpoint: str, prefix: Optional[str] = None,
                    ema: bool = False) -> Tuple[Dict[str, Tensor], dict]:
    """The weights a ``Pretrained`` init_cfg naming ``checkpoint`` finds there, and the meta.

    No conversion: the file's own keys (``pretrained_state`` converts).
    """
    fetched = hub.fetch(checkpoint)
    loaded = (load_source(fetched.path) if fetched is not None else
              CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu', logger='current'))
    return select_state(loaded, checkpoint, prefix, ema)


def _peek_file(path: str, name: str, prefix: Optional[str], ema: bool):
    """Keys, shapes (meta tensors) and meta of a local file without reading its tensors.

    The safe loader maps the tensors' storage (``mmap``) and only the pickle is
    read; a legacy (non-zip) checkpoint is read whole, once more when loaded.
    """
    if path.endswith('.safetensors'):
        from safetensors import safe_open
        with safe_open(path, 'pt') as f:
            state = {k: torch.empty(f.get_slice(k).get_shape(), device='meta') for k in f.keys()}
        return select_state(state, name, prefix, ema)
    checkpoint = load_checkpoint_file(path, map_location='cpu', mmap=True, name=name)
    state, meta = select_state(checkpoint, name, prefix, ema)
    return meta_state(state), meta


# ---------------------------------------------------------------- checking


def describe_backbone(module: nn.Module, arch: Optional[str] = None) -> str:
    """``'RepVGG repvgg-a0 (training form)'``: class, arch (or custom) and form, for messages."""
    arch = arch if arch is not None else auto.arch_of(module)
    form = 'deploy' if getattr(module, 'deploy', False) else 'training'
    return f'{type(module).__name__} {arch or "of a custom arch"} ({form} form)'


def _meta_detection(meta: Mapping) -> Optional[Detection]:
    """What an mmrep-converted checkpoint's meta says it holds (convert_weights or the cache)."""
    cached = auto.read_cache_meta(meta)
    if cached is not None:
        return cached
    if meta.get('mmrep_version') and meta.get('family') and meta.get('arch'):
        return Detection(meta['family'], 'mmrep', meta['arch'], bool(meta.get('deploy')))
    return None


def check_detection(module: nn.Module, detection: Detection, name: str, how: str) -> None:
    """Refuse weights of another family, arch or form than ``module``, naming both."""
    family = auto.family_of(module)
    arch = auto.arch_of(module)
    held = f'{name} holds {detection.describe()} weights ({how})'
    if family is not None and detection.family != family.FAMILY:
        raise PretrainedMismatchError(f'{held}, but the backbone is {describe_backbone(module)}.')
    if arch is not None and detection.arch is not None and arch != detection.arch:
        raise PretrainedMismatchError(
            f'{held}, but the backbone is {describe_backbone(module, arch)}: name weights of '
            f'{arch}, or build the backbone of {detection.arch}.')
    if bool(getattr(module, 'deploy', False)) != detection.deploy:
        raise PretrainedMismatchError(
            f'{held}, but the backbone is {describe_backbone(module, arch)}: build the '
            f'backbone with deploy={detection.deploy}.')


def _fits(module: nn.Module, state: Mapping[str, Tensor]) -> bool:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    return fits_exactly(expected, state, optional_prefixes(module))


def _what_it_holds(state: Mapping[str, Tensor], detection: Optional[Detection]) -> str:
    if detection is not None:
        return f'It holds {detection.describe()} weights.'
    from mmrep.converters import FAMILY_MODULES
    return ('Its layout is none that mmrep converts (the official, timm and mmpretrain layouts '
            f'of {", ".join(FAMILY_MODULES)}; first keys: {", ".join(list(state)[:3])}).')


def identify(module: nn.Module, state: Mapping[str, Tensor], meta: Mapping,
             name: str) -> Optional[Detection]:
    """None if ``state`` fits ``module`` as it is; else the detected layout to convert from.

    Raises :class:`~mmrep.models.pretrained.PretrainedMismatchError` for weights of
    another family, arch or form (as the file's meta or its keys and shapes say),
    and for a layout no family converts, naming the keys. Reads shapes only.
    """
    if _fits(module, state):
        return None
    described = _meta_detection(meta)
    if described is not None:  # an mmrep checkpoint, converted for some arch: its meta says which
        check_detection(module, described, name, 'its meta')
    detection = auto.detect(state)
    if detection is not None:
        check_detection(module, detection, name, 'found from its keys and shapes')
    if detection is None or detection.source == 'mmrep':  # nothing to convert: it does not fit
        refuse_mismatch(module, _without_surplus(module, state), name,
                        [_what_it_holds(state, detection)])
    return detection


def _without_surplus(module: nn.Module, state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    expected = module.state_dict()
    optional = optional_prefixes(module)
    return {k: v for k, v in state.items() if k in expected or not k.startswith(optional)}


def _convert_command(module: nn.Module, name: str) -> Tuple[str, str]:
    """The ``tools/convert_weights.py`` command for the file NAME names, and the file it writes."""
    arch = auto.arch_of(module) or 'ARCH'
    source = hub.source_hint(name) or '{official,timm,mmpretrain}'
    if name.startswith(hub.TIMM_SCHEME):
        filename = hub.HUB_FILES[0]
    elif name.startswith(hub.URL_SCHEMES):
        filename = osp.basename(hub.url_path(name))
    else:
        filename = name
    out = f'{arch}.pth'
    return (f'python tools/convert_weights.py {filename} {out} --from {source} '
            f'--arch {arch}'), out


# ---------------------------------------------------------------- the pipeline


def _fetch(module: nn.Module, name: str) -> Optional[hub.FetchedFile]:
    try:
        return hub.fetch(name)
    except hub.WeightsUnavailableError as error:
        raise error.with_convert_command(*_convert_command(module, name)) from None


def pretrained_state(module: nn.Module, name: str, prefix: Optional[str] = None,
                     ema: bool = False) -> Tuple[Dict[str, Tensor], List[str]]:
    """The weights NAME gives ``module``, in its keys, and hints for a refusal.

    Downloads, converts and caches as needed (module docstring). Raises
    :class:`~mmrep.hub.WeightsUnavailableError` or
    :class:`~mmrep.models.pretrained.PretrainedMismatchError`.
    """
    fetched = _fetch(module, name)
    if fetched is None:  # torchvision://, open-mmlab://, ...: mmengine's loaders
        checkpoint = CheckpointLoader.load_checkpoint(name, map_location='cpu', logger='current')
        state, meta = select_state(checkpoint, name, prefix, ema)
        return _to_module_layout(module, state, meta, name, None)
    cached = auto.cache_path(fetched.converted_dir, fetched.sha256, prefix, ema)
    if osp.isfile(cached):
        checkpoint = load_source(cached)
        detection = auto.read_cache_meta(checkpoint.get('meta') or {})
        if detection is not None:
            print_log(f'{name}: using its conversion {cached}', logger='current')
            check_detection(module, detection, name, 'converted before')
            return dict(checkpoint['state_dict']), [_what_it_holds({}, detection)]
    state, meta = select_state(load_source(fetched.path), name, prefix, ema)
    return _to_module_layout(module, state, meta, name, (fetched, cached))


def _to_module_layout(module, state, meta, name, cache) -> Tuple[Dict[str, Tensor], list]:
    detection = identify(module, state, meta, name)
    if detection is None:
        return state, []
    conversion = auto.convert_detected(state, detection)
    print_log(f'{name}: converted {detection.describe()} weights to mmrep keys'
              + (f' ({len(conversion.dropped)} keys of the classifier and constant buffers '
                 'dropped)' if conversion.dropped else ''), logger='current')
    if cache is not None:
        fetched, path = cache
        auto.write_cache(path, conversion, detection, name, fetched.sha256)
        print_log(f'{name}: conversion cached in {path}', logger='current')
    return conversion.state_dict, [_what_it_holds(state, detection)]


def check_at_build(module: nn.Module, name: str, prefix: Optional[str] = None,
                   ema: bool = False) -> None:
    """What can be refused when the backbone is built: no network, no tensor data read."""
    if name.startswith(hub.TIMM_SCHEME):
        try:
            model, _ = hub.parse_timm_name(name)
        except ValueError as error:
            raise PretrainedMismatchError(str(error)) from None
        known = auto.timm_arch(model)
        if known is not None:
            check_detection(module, Detection(known[0], 'timm', known[1], False), name,
                            'from the timm model name')
    fetched = hub.fetch(name, download=False)
    if fetched is None:  # not here yet (or a scheme of mmengine's): checked when loaded
        return
    identify(module, *_peek_file(fetched.path, name, prefix, ema), name)


@WEIGHT_INITIALIZERS.register_module(name=INITIALIZER)
class StrictPretrainedInit(PretrainedInit):
    """mmengine's ``Pretrained``, for mmrep backbones: names, any known layout, strict loading.

    :meth:`RepBackbone.init_weights <mmrep.models.backbones.base.RepBackbone.init_weights>`
    uses it for an ``init_cfg`` of ``type='Pretrained'`` (module docstring).
    ``ema=True`` takes a checkpoint's EMA weights (``state_dict_ema``, ...).
    """

    def __init__(self, checkpoint: str, prefix: Optional[str] = None, map_location='cpu',
                 ema: bool = False):
        super().__init__(checkpoint, prefix=prefix, map_location=map_location)
        self.ema = ema

    def check(self, module: nn.Module) -> None:
        """Refuse at build time what is wrong without looking further (no network)."""
        check_at_build(module, self.checkpoint, self.prefix, self.ema)

    def __call__(self, module: nn.Module) -> None:
        print_log(f'load {self.prefix + " in " if self.prefix else ""}{type(module).__name__} '
                  f'from {self.checkpoint}{" (EMA weights)" if self.ema else ""}',
                  logger='current')
        state, hints = pretrained_state(module, self.checkpoint, self.prefix, self.ema)
        load_state_strict(module, state, self.checkpoint, hints)
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())


def prepare_pretrained(model: nn.Module) -> int:
    """Fetch and convert (into the cache) the pretrained weights of every mmrep backbone in ``model``.

    ``tools/train.py`` calls it before the data sets are built, so that a
    download that fails stops there. The weights are loaded later, by
    ``init_weights``, from the cache. Returns how many backbones name weights.
    """
    count = 0
    for module in model.modules():
        get_cfg = getattr(module, 'pretrained_init_cfg', None)
        cfg = get_cfg() if callable(get_cfg) else None
        if cfg is None:
            continue
        pretrained_state(module, cfg['checkpoint'], cfg.get('prefix'), cfg.get('ema', False))
        count += 1
    return count
