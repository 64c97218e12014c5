"""``_base_ = 'mmrep::configs/<name>.py'`` for downstream configs.

mmengine 0.10.7 resolves ``pkg::`` bases only for packages in its
``MODULE2PACKAGE`` table, and only in the form ``pkg::folder/file.py``. After
``import mmrep`` mmrep is in the table and its configs are found under
``mmrep/.mim/configs/configs``, a link to the repository's ``configs/`` (a
wheel holds copies; ``mmrep/.mim/model-index.yml`` lists no models, so
mmengine takes the path as it is).

Installed mmrep also adds the entry without ``import mmrep``, at the first
import of ``mmengine.config.utils`` in any program (``_mmrep_startup_hook``,
run by the ``mmrep-config-scope.pth`` file setup.py installs), so stock
OpenMMLab tools read ``mmrep::`` bases. Both run the hook's ``register``.
"""
import os.path as osp

import _mmrep_startup_hook
from mmengine.config import utils as config_utils

CONFIG_ROOT = osp.join(osp.dirname(osp.abspath(__file__)), '.mim', 'configs', 'configs')


def register_config_scope() -> None:
    """What the start-up hook does, for programs started without it (``python -S``, PYTHONPATH)."""
    _mmrep_startup_hook.register(config_utils)


def config_path(name: str) -> str:
    """Absolute path of an mmrep config, e.g. ``config_path('retinanet_repghost_1x.py')``."""
    path = osp.join(CONFIG_ROOT, name)
    if not osp.isfile(path):
        raise FileNotFoundError(f'no mmrep config {name!r} in {CONFIG_ROOT}')
    return path


register_config_scope()
