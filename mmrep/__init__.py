"""mmrep: structural re-parameterization for OpenMMLab detection and segmentation.

``import mmrep`` (or ``custom_imports=dict(imports=['mmrep'])`` in a config)
registers the backbones, the neck and ``RepDeployHook`` with mmdet and mmseg.
"""
from .reparam import count_unfused, reparameterize_model
from .version import __version__
from . import compat  # noqa: F401  (version differences)
from . import checkpoint  # noqa: F401  (every mmengine checkpoint scheme loads safely)
from . import config_scope  # noqa: F401  (_base_ = 'mmrep::configs/...')
from .config_scope import config_path
from . import registry  # noqa: F401,E402
from . import pretrained_init  # noqa: F401,E402  (the 'StrictPretrained' initializer)

__all__ = ['reparameterize_model', 'count_unfused', 'config_path', '__version__']
