"""Start-up hook: ``_base_ = 'mmrep::configs/<name>.py'`` in any OpenMMLab tool.

mmengine resolves ``pkg::`` bases only for packages in its
``mmengine.config.utils.MODULE2PACKAGE`` table, and reads ``_base_`` before a
config's ``custom_imports``, so a stock tool (mmdet's ``tools/train.py``)
fails on an mmrep base unless something put mmrep in the table first.
``import mmrep`` does (:mod:`mmrep.config_scope`); this hook does it without.

Installing mmrep (wheel or editable) puts ``mmrep-config-scope.pth`` into
site-packages (see setup.py), so Python runs :func:`install` at start-up. That
imports nothing: it puts :class:`ConfigScopeFinder` on ``sys.meta_path``.
When a program first imports ``mmengine.config.utils``, the finder lets the
normal import run, adds the same table entry as :mod:`mmrep.config_scope`,
and removes itself. mmengine then imports ``mmrep`` when it resolves the first
``mmrep::`` base, which registers mmrep's models and hooks.

The same moment silences one warning that mmengine's resolution of ``pkg::``
bases causes (:func:`quiet_mmengine_pkg_resources`).
"""
import sys
import warnings

CONFIG_UTILS = 'mmengine.config.utils'
# mmengine maps the scope to a name it finds with pkg_resources, else with
# importlib. 'mmrep.config_scope' is no distribution, so importlib finds that
# module and mmrep/ is the package path: right for editable installs too.
SCOPE, SCOPE_MODULE = 'mmrep', 'mmrep.config_scope'

PKG_RESOURCES_DEPRECATION = 'pkg_resources is deprecated as an API'
# where the warning points: mmengine's import of pkg_resources, and importlib.reload
MMENGINE_PKG_RESOURCES_CALLERS = (r'mmengine\.utils\.package_utils\Z', r'importlib\Z')


def quiet_mmengine_pkg_resources() -> None:
    """Ignore setuptools' ``pkg_resources is deprecated`` warning where mmengine raises it.

    mmengine 0.10.7's ``is_installed`` imports ``pkg_resources`` and then
    reloads it (``importlib.reload``) for every ``pkg::`` base it resolves:
    ``mmrep::`` in a downstream config, ``mmdet::`` / ``mmseg::`` in mmrep's
    own. setuptools >= 81 warns at each (re)import, three times in a typical
    run, about code neither mmrep nor its users can change. Only this message,
    and only when raised by mmengine's import (module
    ``mmengine.utils.package_utils``) or by a reload (module ``importlib``):
    a program's own ``import pkg_resources`` still warns.
    """
    for module in MMENGINE_PKG_RESOURCES_CALLERS:
        warnings.filterwarnings('ignore', message=PKG_RESOURCES_DEPRECATION,
                                category=UserWarning, module=module)


def register(config_utils) -> None:
    """Add the ``mmrep`` scope to mmengine's ``MODULE2PACKAGE`` table; quiet its pkg_resources use."""
    # a hook that runs in every program must not break an mmengine without the table
    table = getattr(config_utils, 'MODULE2PACKAGE', None)
    if isinstance(table, dict):
        table.setdefault(SCOPE, SCOPE_MODULE)
    quiet_mmengine_pkg_resources()


class _RegisterAfterExec:
    """Runs a module with its own loader, then registers the mmrep scope in it."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        register(module)

    def __getattr__(self, name):  # get_source, get_filename, ... of the real loader
        return getattr(self._loader, name)


class ConfigScopeFinder:
    """Finds nothing itself; wraps the loader of ``mmengine.config.utils``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != CONFIG_UTILS:
            return None
        uninstall()
        for finder in sys.meta_path:
            find_spec = getattr(finder, 'find_spec', None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                if hasattr(spec.loader, 'exec_module'):
                    spec.loader = _RegisterAfterExec(spec.loader)
                return spec
        return None


def install() -> None:
    """Register now if mmengine's config utils are loaded, else on their import."""
    if CONFIG_UTILS in sys.modules:
        register(sys.modules[CONFIG_UTILS])
    elif not any(isinstance(f, ConfigScopeFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, ConfigScopeFinder())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, ConfigScopeFinder)]
