"""OpenMMLab glue: registers mmrep's models and hooks where configs look them up.

mmdet and mmseg configs build models from their own registries (default
scope ``mmdet`` / ``mmseg``), so every class is registered in both.
"""
from mmdet.registry import HOOKS as MMDET_HOOKS
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODEL_WRAPPERS
from mmseg.registry import HOOKS as MMSEG_HOOKS
from mmseg.registry import MODELS as MMSEG_MODELS

from mmrep.engine.cpu_ddp import CPUDistributedDataParallel
from mmrep.engine.rep_deploy_hook import RepDeployHook
from mmrep.models.backbones.mobileone import MobileOne
from mmrep.models.backbones.orepa_resnet import OREPAResNet
from mmrep.models.backbones.repghostnet import RepGhostNet
from mmrep.models.backbones.replknet import RepLKNet
from mmrep.models.backbones.repvgg import RepVGG
from mmrep.models.backbones.repvit import RepViT
from mmrep.models.necks.rep_pafpn import RepPAFPN

MODEL_CLASSES = (RepVGG, RepGhostNet, OREPAResNet, RepLKNet, MobileOne, RepViT, RepPAFPN)
HOOK_CLASSES = (RepDeployHook,)

for _registry in (MMDET_MODELS, MMSEG_MODELS):
    for _cls in MODEL_CLASSES:
        _registry.register_module(module=_cls, force=True)
for _registry in (MMENGINE_HOOKS, MMDET_HOOKS, MMSEG_HOOKS):
    for _cls in HOOK_CLASSES:
        _registry.register_module(module=_cls, force=True)
MODEL_WRAPPERS.register_module(module=CPUDistributedDataParallel, force=True)
