"""What every mmrep backbone shares: stem + four stages, and the mmdet options.

A subclass builds ``self.stem`` and ``self.stages`` (four ``nn.Sequential``
of blocks ending at strides 4/8/16/32); this class runs them and gives the
options OpenMMLab users expect: ``out_indices``, ``frozen_stages``,
``norm_eval``, ``with_cp``, ``init_cfg`` and ``deploy``.
"""
from __future__ import annotations

import contextlib
import functools
from functools import partial
from typing import Iterator, Mapping, Optional, Sequence, Union

import torch
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from mmengine.model.weight_init import PretrainedInit
from mmengine.registry import WEIGHT_INITIALIZERS
from torch import nn

from mmrep import fusion
from mmrep.blocks.base import NormLayer
from mmrep.reparam import reparameterize_model

# The strict ``Pretrained`` initializer (weights by name, conversion on the fly):
# OpenMMLab glue, registered by mmrep.pretrained_init, found through the registry.
STRICT_PRETRAINED = 'StrictPretrained'

NUM_STAGES = 4


def _build_norm(norm_cfg: dict, num_features: int) -> nn.Module:
    norm = build_norm_layer(norm_cfg, num_features)[1]
    check_foldable_norm(norm, norm_cfg)
    return norm


def check_foldable_norm(norm: nn.Module, norm_cfg: dict) -> None:
    """Refuse a norm that fusion cannot fold into a conv, at build time rather than after training.

    Only a BatchNorm with running statistics (BN, SyncBN) is a fixed affine map in
    eval mode: the check is the one fusion makes (:func:`mmrep.fusion.bn_running_stats`).
    """
    try:
        fusion.bn_running_stats(norm)
    except (TypeError, ValueError) as err:
        raise ValueError(f'norm_cfg {norm_cfg} builds a norm the model cannot be fused '
                         f'with: {err}') from None


def make_norm_layer(norm_cfg: Optional[dict]) -> NormLayer:
    """A ``channels -> norm module`` factory from an mmcv ``norm_cfg`` (BN, SyncBN, ...).

    Norms that cannot be fused (GN, LN, IN, BN without running statistics)
    raise a ValueError naming them when the first one is built.
    """
    return partial(_build_norm, dict(norm_cfg or dict(type='BN', requires_grad=True)))


@contextlib.contextmanager
def running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Whatever runs inside, the BatchNorm running statistics of ``module`` end as they began.

    Activation checkpointing re-runs a block in training mode during backward;
    without this the running statistics, which fusion folds into the convs,
    would be updated twice per step. (The re-run itself must stay the same
    computation, so the statistics are restored rather than not updated.)
    """
    norms = [m for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [{name: buf.clone() for name, buf in m.named_buffers(recurse=False)} for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, buffers in zip(norms, saved):
                for name, value in buffers.items():
                    getattr(norm, name).copy_(value)


def check_choice(name: str, value, valid: Sequence) -> None:
    """Raise a ValueError naming ``value`` and listing the valid choices."""
    if value not in valid:
        raise ValueError(f'unknown {name} {value!r}; valid: {", ".join(map(repr, valid))}')


def resolve_arch(family: str, arch: Union[str, Mapping], settings: Mapping[str, dict],
                 required: Sequence[str], optional: Optional[Mapping] = None,
                 per_stage: Sequence[str] = (), depths: Optional[str] = None) -> dict:
    """An arch setting: a copy of ``settings[arch]`` for a name, else the checked dict.

    A custom dict must have the ``required`` keys and no key outside
    ``required`` and ``optional`` (whose values are the defaults filled in);
    the ``per_stage`` keys hold one value per stage, and ``depths`` (a key)
    at least one block per stage. Raises naming the offending keys or values.
    """
    optional = dict(optional or {})
    if isinstance(arch, str):
        check_choice(f'{family} arch', arch, list(settings))
        return dict(optional, **settings[arch])
    if not isinstance(arch, Mapping):
        raise TypeError(f'arch must be a name or a dict, got {type(arch).__name__}')
    missing = set(required) - set(arch)
    unknown = set(arch) - set(required) - set(optional)
    if missing or unknown:
        raise ValueError(f'a custom {family} arch needs {" and ".join(required)} and may have '
                         f'{" and ".join(optional)}; missing {sorted(missing)}, '
                         f'unknown {sorted(unknown)}')
    arch = dict(optional, **arch)
    for key in per_stage:
        if len(arch[key]) != NUM_STAGES:
            raise ValueError(f'arch {key} needs {NUM_STAGES} values, got {arch[key]}')
    if depths is not None and min(arch[depths]) < 1:
        raise ValueError(f'every stage needs a block, got {depths}={arch[depths]}')
    return arch


class RepBackbone(BaseModule):
    """Base class of the mmrep backbones.

    Args:
        out_indices: which stage outputs to return; 0..3 are strides 4/8/16/32.
        frozen_stages: -1 freezes nothing, 0 the stem, ``i`` the stem and the
            first ``i`` stages (as mmdet's ResNet).
        norm_eval: keep every norm layer in eval mode while training.
        with_cp: trade compute for memory with activation checkpointing per block.
        deploy: the network is built in its fused, plain form.
        init_cfg: mmengine init config, e.g. ``dict(type='Pretrained', checkpoint=...)``.
    """

    def __init__(self, out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_eval: bool = False, with_cp: bool = False, deploy: bool = False,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        out_indices = tuple(out_indices)
        bad = [i for i in out_indices if not 0 <= i < NUM_STAGES]
        if bad or not out_indices:
            raise ValueError(f'out_indices {out_indices} must be a non-empty subset of '
                             f'0..{NUM_STAGES - 1} (strides 4/8/16/32)')
        if not -1 <= frozen_stages <= NUM_STAGES:
            raise ValueError(f'frozen_stages must be in -1..{NUM_STAGES}, got {frozen_stages}')
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.deploy = deploy

    # subclasses set these
    stem: nn.Module
    stages: nn.ModuleList

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and self.training and x.requires_grad:
            return cp.checkpoint(block, x, use_reentrant=False, context_fn=lambda: (
                contextlib.nullcontext(), running_stats_kept(block)))
        return block(x)

    def forward(self, x: torch.Tensor) -> tuple:
        x = self._run(self.stem, x)
        outs = []
        for i, stage in enumerate(self.stages):
            for block in stage:
                x = self._run(block, x)
            if i in self.out_indices:
                outs.append(self._stage_output(i, x))
        return tuple(outs)

    def _stage_output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """What stage ``index`` returns from its final map (a subclass may normalize it)."""
        return x

    def _frozen_modules(self) -> list:
        """The modules ``frozen_stages`` freezes: the stem and the first stages."""
        return [self.stem] + list(self.stages[:self.frozen_stages])

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    # Layers that pretrained (ImageNet) checkpoints may lack, or have more of
    # (norms a subclass adds for downstream tasks): Pretrained loading skips
    # surplus ones and starts missing ones fresh (their reset_parameters).
    pretrained_optional_prefixes: Sequence[str] = ()

    def __init_subclass__(cls, **kwargs):
        # Check the Pretrained init_cfg once the outermost __init__ has built the
        # whole network: a wrong file fails when the model is built (before the
        # runner dumps its config and builds data sets), not at init_weights.
        super().__init_subclass__(**kwargs)
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kw):
            init(self, *args, **kw)
            if type(self) is cls:
                self._check_pretrained()

        cls.__init__ = __init__

    def pretrained_init_cfg(self) -> Optional[dict]:
        """The ``type='Pretrained'`` entry of ``init_cfg``, or None."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, (list, tuple)) else [self.init_cfg]
        pretrained = [cfg for cfg in cfgs
                      if cfg and cfg.get('type') in ('Pretrained', PretrainedInit)]
        if len(pretrained) > 1:
            raise ValueError(f'{type(self).__name__}: init_cfg has {len(pretrained)} Pretrained '
                             'entries; give one checkpoint')
        return pretrained[0] if pretrained else None

    def _strict_initializer(self, cfg: dict):
        return WEIGHT_INITIALIZERS.build(dict(cfg, type=STRICT_PRETRAINED))

    def _check_pretrained(self) -> None:
        cfg = self.pretrained_init_cfg()
        if cfg is not None and next(self.parameters()).device.type != 'meta':
            self._strict_initializer(cfg).check(self)

    def init_weights(self) -> None:
        """mmengine's initialisation, but a ``Pretrained`` init_cfg must cover the backbone.

        mmengine loads ``Pretrained`` with ``strict=False``; here the entry
        (``checkpoint``, optional ``prefix``, ``map_location``) becomes a
        :class:`~mmrep.pretrained_init.StrictPretrainedInit`, which takes
        weights by name and in any layout the converters know, and raises,
        naming the keys, for a checkpoint that does not fit. It runs after
        the other entries (Kaiming, Constant, ...); no child of a RepBackbone
        has an ``init_weights`` of its own that could run later.
        """
        pretrained = self.pretrained_init_cfg()
        if pretrained is None:
            return super().init_weights()
        cfgs = self.init_cfg if isinstance(self.init_cfg, (list, tuple)) else [self.init_cfg]
        original = self.init_cfg
        self.init_cfg = ([cfg for cfg in cfgs if cfg and cfg is not pretrained]
                         + [dict(pretrained, type=STRICT_PRETRAINED)])
        try:
            super().init_weights()
        finally:
            self.init_cfg = original

    def reparameterize(self) -> None:
        """Fuse every block in place (see :func:`mmrep.reparameterize_model`)."""
        reparameterize_model(self, inplace=True)
        self.deploy = True

    # mmdeploy and mmpretrain call this name on backbones
    switch_to_deploy = reparameterize
