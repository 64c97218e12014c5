"""OpenMMLab glue: registers mmrep's models and hooks where configs look them up.

mmdet and mmseg configs build models from their own registries (default
scope ``mmdet`` / ``mmseg``), so every class is registered in each of them
that is installed: mmdet comes with the ``mmrep[det]`` extra, mmseg with
``mmrep[seg]``. A config of the codebase that is missing fails with
:class:`MissingCodebaseError`, which names the extra to install.
"""
import importlib.util
import warnings

from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODEL_WRAPPERS

from mmrep.engine.cpu_ddp import CPUDistributedDataParallel
from mmrep.engine.rep_deploy_hook import RepDeployHook
from mmrep.models.backbones.orepa_resnet import OREPAResNet
from mmrep.models.backbones.repghostnet import RepGhostNet
from mmrep.models.backbones.replknet import RepLKNet
from mmrep.models.backbones.repvgg import RepVGG
from mmrep.models.necks.rep_pafpn import RepPAFPN

MODEL_CLASSES = (RepVGG, RepGhostNet, OREPAResNet, RepLKNet, RepPAFPN)
HOOK_CLASSES = (RepDeployHook,)

# config scope -> (distribution, mmrep extra)
CODEBASES = {'mmdet': ('mmdet', 'det'), 'mmseg': ('mmsegmentation', 'seg')}


class MissingCodebaseError(ModuleNotFoundError):
    """A config needs mmdet or mmseg, and it is not installed."""


def installed_codebases() -> tuple:
    """The config scopes of the installed codebases: ``('mmdet', 'mmseg')`` or a part of it."""
    return tuple(scope for scope in CODEBASES if importlib.util.find_spec(scope) is not None)


def require_codebase(scope: str, what: str = 'this config') -> None:
    """Raise :class:`MissingCodebaseError` if ``scope`` (``'mmdet'``/``'mmseg'``) is not installed."""
    if scope in CODEBASES and scope not in installed_codebases():
        distribution, extra = CODEBASES[scope]
        raise MissingCodebaseError(
            f'{what} needs {distribution} (scope {scope!r}), which is not installed: '
            f"pip install 'mmrep[{extra}]' (or mmrep[all] for mmdet and mmseg)", name=scope)


def codebase_registries(name: str) -> list:
    """``[(scope, registry)]`` of the registry ``name`` (``'MODELS'``, ``'HOOKS'``) per installed codebase."""
    return [(scope, getattr(importlib.import_module(f'{scope}.registry'), name))
            for scope in installed_codebases()]


def register_all() -> None:
    if not installed_codebases():
        warnings.warn("neither mmdet nor mmsegmentation is installed, so mmrep's models are "
                      "registered with no codebase: pip install 'mmrep[det]', 'mmrep[seg]' "
                      "or 'mmrep[all]'")
    for _, registry in codebase_registries('MODELS'):
        for cls in MODEL_CLASSES:
            registry.register_module(module=cls, force=True)
    for registry in [MMENGINE_HOOKS] + [r for _, r in codebase_registries('HOOKS')]:
        for cls in HOOK_CLASSES:
            registry.register_module(module=cls, force=True)
    MODEL_WRAPPERS.register_module(module=CPUDistributedDataParallel, force=True)


register_all()
