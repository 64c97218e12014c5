"""OpenMMLab glue: mmrep's registries, the ``mmrep`` config scope, and registration with the hosts.

Two ways reach mmrep's classes from a config:

* mmdet and mmseg configs build from their own registries (default scope
  ``mmdet`` / ``mmseg``), so every mmrep class is registered in both
  (``type='RepVGG'`` in an mmdet model dict);
* mmengine tags every dict a downstream config inherits from an
  ``mmrep::configs/...`` base with ``_scope_='mmrep'`` (the outermost dicts
  that have a ``type``: datasets, transforms, samplers, metrics, hooks, ...).
  Building such a dict, mmengine switches the default scope to ``mmrep``,
  imports ``mmrep.registry`` and looks for the registry of scope ``mmrep``
  under its root registry of that kind (``Registry.switch_scope_and_registry``);
  this module defines one for each of mmengine's root registries.

An mmrep config is a detection config *or* a segmentation config, and both
hosts define ``LoadAnnotations``, ``Resize``, ``CityscapesDataset``, ... So
an ``mmrep`` registry looks a name up in its own classes first, then in the
registry of the *host scope*: the default scope that was current before
mmengine switched to ``mmrep`` (the runner's ``default_scope``, e.g. ``mmseg``
for an mmseg config). ``DefaultScope.overwrite_default_scope`` keeps the
earlier scopes in creation order, so the host is the newest one that is not
``mmrep``. Then the parents (mmengine's root registries), as mmengine does.
A fixed search order over both hosts would build mmdet's ``LoadAnnotations``
into an mmseg pipeline.

The hosts are those installed: mmdet comes with the ``mmrep[det]`` extra,
mmseg with ``mmrep[seg]``. A config of the host that is missing fails with
:class:`MissingCodebaseError`, which names the extra to install.
"""
from __future__ import annotations

import importlib.util
import warnings
from importlib import import_module
from typing import Optional

from mmengine import registry as mmengine_registry
from mmengine.registry import DefaultScope, Registry

from mmrep.engine.cpu_ddp import CPUDistributedDataParallel
from mmrep.engine.rep_deploy_hook import RepDeployHook
from mmrep.models.backbones.mobileone import MobileOne
from mmrep.models.backbones.orepa_resnet import OREPAResNet
from mmrep.models.backbones.repghostnet import RepGhostNet
from mmrep.models.backbones.replknet import RepLKNet
from mmrep.models.backbones.repvgg import RepVGG
from mmrep.models.backbones.repvit import RepViT
from mmrep.models.necks.rep_pafpn import RepPAFPN

SCOPE = 'mmrep'
# the OpenMMLab packages whose configs use mmrep's classes by their plain names:
# config scope -> (distribution, mmrep extra)
CODEBASES = {'mmdet': ('mmdet', 'det'), 'mmseg': ('mmsegmentation', 'seg')}


class MissingCodebaseError(ModuleNotFoundError):
    """A config needs mmdet or mmseg, and it is not installed."""


def installed_codebases() -> tuple:
    """The config scopes of the installed hosts: ``('mmdet', 'mmseg')`` or a part of it."""
    return tuple(scope for scope in CODEBASES if importlib.util.find_spec(scope) is not None)


def require_codebase(scope: Optional[str], what: str = 'this config') -> None:
    """Raise :class:`MissingCodebaseError` if ``scope`` (``'mmdet'``/``'mmseg'``) is not installed."""
    if scope in CODEBASES and scope not in installed_codebases():
        distribution, extra = CODEBASES[scope]
        raise MissingCodebaseError(
            f'{what} needs {distribution} (scope {scope!r}), which is not installed: '
            f"pip install 'mmrep[{extra}]' (or mmrep[all] for mmdet and mmseg)", name=scope)


def codebase_registries(name: str) -> list:
    """``[(scope, registry)]`` of the registry ``name`` (``'MODELS'``, ``'HOOKS'``) per installed host."""
    return [(scope, getattr(import_module(f'{scope}.registry'), name))
            for scope in installed_codebases()]


HOST_SCOPES = installed_codebases()


def host_scope() -> Optional[str]:
    """The default scope that was current before mmengine switched to ``mmrep``; None if none."""
    # ManagerMixin keeps DefaultScope instances in creation order; the current one is the last
    for instance in reversed(list(DefaultScope._instance_dict.values())):
        if instance.scope_name != SCOPE:
            return instance.scope_name
    return None


class HostScopeRegistry(Registry):
    """A registry of the ``mmrep`` scope: mmrep's own classes, then the host scope's, then mmengine's.

    See the module docstring. Scoped keys (``'mmdet.Resize'``) and dotted
    import paths resolve as in any mmengine registry.
    """

    def host_registry(self) -> Optional[Registry]:
        """The registry of the same kind (``'dataset'``, ...) in the host scope, if any."""
        scope = host_scope()
        if scope is None:
            return None
        try:  # registers the host's registry nodes, as mmengine does for the current scope
            import_module(f'{scope}.registry')
        except ImportError:
            pass
        return self._get_root_registry()._search_child(scope)

    def get(self, key: str):
        scope, name = self.split_scope_key(key) if isinstance(key, str) else (None, None)
        if name is not None and scope in (None, self.scope) and name not in self._module_dict:
            host = self.host_registry()
            if host is not None and host is not self:
                found = host.get(name)
                if found is not None:
                    return found
        return super().get(key)


def _scope_registry(root: Registry) -> HostScopeRegistry:
    """The ``mmrep`` child of one of mmengine's root registries (same name, same build function).

    Its location is this module, which registers mmrep's classes: without
    one, mmengine would look for an ``mmrep.utils.register_all_modules``.
    """
    return HostScopeRegistry(root.name, parent=root, scope=SCOPE, locations=[__name__])


# one per root registry of mmengine 0.10.7, so that no `_scope_='mmrep'` dict falls back to the root
RUNNERS = _scope_registry(mmengine_registry.RUNNERS)
RUNNER_CONSTRUCTORS = _scope_registry(mmengine_registry.RUNNER_CONSTRUCTORS)
LOOPS = _scope_registry(mmengine_registry.LOOPS)
HOOKS = _scope_registry(mmengine_registry.HOOKS)
STRATEGIES = _scope_registry(mmengine_registry.STRATEGIES)
DATASETS = _scope_registry(mmengine_registry.DATASETS)
DATA_SAMPLERS = _scope_registry(mmengine_registry.DATA_SAMPLERS)
TRANSFORMS = _scope_registry(mmengine_registry.TRANSFORMS)
MODELS = _scope_registry(mmengine_registry.MODELS)
MODEL_WRAPPERS = _scope_registry(mmengine_registry.MODEL_WRAPPERS)
WEIGHT_INITIALIZERS = _scope_registry(mmengine_registry.WEIGHT_INITIALIZERS)
OPTIMIZERS = _scope_registry(mmengine_registry.OPTIMIZERS)
OPTIM_WRAPPERS = _scope_registry(mmengine_registry.OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _scope_registry(mmengine_registry.OPTIM_WRAPPER_CONSTRUCTORS)
PARAM_SCHEDULERS = _scope_registry(mmengine_registry.PARAM_SCHEDULERS)
METRICS = _scope_registry(mmengine_registry.METRICS)
EVALUATOR = _scope_registry(mmengine_registry.EVALUATOR)
TASK_UTILS = _scope_registry(mmengine_registry.TASK_UTILS)
VISUALIZERS = _scope_registry(mmengine_registry.VISUALIZERS)
VISBACKENDS = _scope_registry(mmengine_registry.VISBACKENDS)
LOG_PROCESSORS = _scope_registry(mmengine_registry.LOG_PROCESSORS)
INFERENCERS = _scope_registry(mmengine_registry.INFERENCERS)
FUNCTIONS = _scope_registry(mmengine_registry.FUNCTIONS)

MODEL_CLASSES = (RepVGG, RepGhostNet, OREPAResNet, RepLKNet, MobileOne, RepViT, RepPAFPN)
HOOK_CLASSES = (RepDeployHook,)


def _register(registry: Registry, classes) -> None:
    for cls in classes:
        registry.register_module(module=cls, force=True)


_register(MODELS, MODEL_CLASSES)
_register(HOOKS, HOOK_CLASSES)
if not HOST_SCOPES:
    warnings.warn("neither mmdet nor mmsegmentation is installed, so mmrep's models are "
                  "registered with neither: pip install 'mmrep[det]', 'mmrep[seg]' or 'mmrep[all]'")
for _scope, _host_models in codebase_registries('MODELS'):
    _register(_host_models, MODEL_CLASSES)
for _scope, _host_hooks in codebase_registries('HOOKS'):
    _register(_host_hooks, HOOK_CLASSES)
# also under the default scope 'mmengine' (a Runner built from a plain config)
_register(mmengine_registry.HOOKS, HOOK_CLASSES)
mmengine_registry.MODEL_WRAPPERS.register_module(module=CPUDistributedDataParallel, force=True)
