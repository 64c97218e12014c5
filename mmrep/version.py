"""mmrep's version, the versions of the stack it supports, and the check at ``import mmrep``.

One table serves both: setup.py reads this file (it runs it with ``exec``, so
only the standard library is imported at module level) for
``install_requires`` and the extras, and :func:`check_installed_stack` checks
the installed packages against the same ranges before ``import mmrep`` imports
any of them. A torch, mmcv or mmdet outside the ranges gives one message that
says what is installed and what is supported, instead of a traceback from deep
inside mmdet or mmcv.

The ranges are what mmrep runs with; the exact versions measured together on
each stack are pinned in ``requirements/<stack>.txt`` (docs/en/get_started.md
shows the matrix).
"""
import os

__version__ = '0.1.0'

PYTHON_REQUIRES = '>=3.9,<3.13'

# distribution -> range (install_requires). torch has no upper bound: a bound
# would make pip replace the torch of a user's environment (and with it their
# mmcv build); a torch newer than any measured stack only warns (NEWEST_MEASURED).
RUNTIME_REQUIRES = {
    'torch': '>=2.1',
    'torchvision': '>=0.16',
    'mmengine': '>=0.10.0,<1.0.0',
    'numpy': '',
    'packaging': '',
    # pretrained weights by name (timm://): its errors module, endpoint=
    'huggingface_hub': '>=0.24',
    'safetensors': '',
}

# Checked at import but not installed by pip (the `mim` extra, as mmdet and mmseg
# declare it): mmcv's compiled ops must be built for the installed torch.
# mmdet 3.3 and mmseg 1.2 refuse mmcv>=2.2 themselves.
MIM_REQUIRES = {'mmcv': '>=2.0.0,<2.2.0'}

# extra -> {distribution: range}. mmseg imports ftfy and regex without declaring them.
CODEBASE_EXTRAS = {
    'det': {'mmdet': '>=3.3.0,<3.4.0'},
    'seg': {'mmsegmentation': '>=1.2.2,<1.3.0', 'ftfy': '', 'regex': ''},
}

# the import name of each codebase distribution, and the config scope it registers
CODEBASE_MODULES = {'mmdet': 'mmdet', 'mmsegmentation': 'mmseg'}

# the newest versions a stack of requirements/ was measured with
NEWEST_MEASURED = {'torch': '2.15.0'}

SKIP_CHECK_ENV = 'MMREP_SKIP_VERSION_CHECK'


def requirement_lines(table: dict) -> list:
    """``['torch>=2.1', 'numpy', ...]`` for setup.py."""
    return [f'{name}{spec}' for name, spec in table.items()]


class IncompatibleStackError(ImportError):
    """The installed torch / mmcv / mmengine / mmdet / mmseg is outside mmrep's ranges."""


# import names where they differ from the distribution's
MODULE_NAMES = {'mmsegmentation': 'mmseg', 'mmcv-lite': None, 'ftfy': None, 'regex': None}


def installed_version(distribution: str, import_fallback: bool = True):
    """The installed version of ``distribution``, or None if it is not installed.

    A package without metadata (a source tree on ``PYTHONPATH``) is imported for its
    ``__version__``.
    """
    import importlib
    import importlib.util
    from importlib import metadata
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        module = MODULE_NAMES.get(distribution, distribution)
        if not import_fallback or module is None or importlib.util.find_spec(module) is None:
            return None
        return getattr(importlib.import_module(module), '__version__', None)


def stack_problems(versions: dict) -> list:
    """What is wrong with an environment holding ``versions`` ({distribution: version or None}).

    Empty when mmrep supports it. Each entry says what is installed and what is supported.
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    def outside(name, spec):
        try:
            return not SpecifierSet(spec).contains(Version(versions[name]), prereleases=True)
        except InvalidVersion:
            return True

    problems = []
    for name, spec in {**RUNTIME_REQUIRES, **MIM_REQUIRES}.items():
        if not spec:
            continue
        if versions.get(name) is None:
            problems.append(f'{name} is not installed; mmrep needs {name}{spec}'
                            + (' with its compiled ops (mim install "mmcv>=2.0.0,<2.2.0", or '
                               'scripts/setup_env.sh builds it)' if name == 'mmcv' else ''))
        elif outside(name, spec):
            problems.append(f'{name} {versions[name]} is installed; mmrep supports {name}{spec}')
    for extra, table in CODEBASE_EXTRAS.items():
        for name, spec in table.items():
            if spec and versions.get(name) is not None and outside(name, spec):
                problems.append(f'{name} {versions[name]} is installed; mmrep supports '
                                f'{name}{spec} (the mmrep[{extra}] extra)')
    return problems


def check_installed_stack() -> None:
    """Raise :class:`IncompatibleStackError` naming every package outside mmrep's ranges.

    Reads package metadata only: nothing of the stack is imported. Setting the
    environment variable ``MMREP_SKIP_VERSION_CHECK=1`` turns the error into a warning.
    """
    import warnings
    names = set(RUNTIME_REQUIRES) | set(MIM_REQUIRES) | {'mmcv-lite'}
    for table in CODEBASE_EXTRAS.values():
        names |= set(table)
    versions = {name: installed_version(name) for name in names - {'mmcv'}}
    # mmcv-lite is the same package without the compiled ops (and installs the module mmcv)
    versions['mmcv'] = (installed_version('mmcv', import_fallback=False) or versions['mmcv-lite']
                        or installed_version('mmcv'))
    if versions['mmcv-lite'] and not installed_version('mmcv', import_fallback=False):
        warnings.warn(f'mmcv-lite {versions["mmcv-lite"]} has no compiled ops, which mmdet\'s '
                      'and mmseg\'s models import: building a model in their scope fails with '
                      '"No module named \'mmcv._ext\'". Install mmcv in its place '
                      '(scripts/setup_env.sh builds it)')
    problems = stack_problems(versions)
    if problems:
        supported = ', '.join(f'{name}{spec}' for name, spec in
                              {**RUNTIME_REQUIRES, **MIM_REQUIRES}.items() if spec)
        codebases = ', '.join(f'{name}{spec}' for table in CODEBASE_EXTRAS.values()
                              for name, spec in table.items() if spec)
        message = (f'mmrep {__version__} does not support the installed packages:\n  - '
                   + '\n  - '.join(problems)
                   + f'\nmmrep supports {supported}; and {codebases}. '
                   'docs/en/get_started.md lists the stacks measured to work together '
                   f'(set {SKIP_CHECK_ENV}=1 to import anyway, unsupported).')
        if os.environ.get(SKIP_CHECK_ENV) == '1':
            warnings.warn(message)
        else:
            raise IncompatibleStackError(message)
    from packaging.version import InvalidVersion, Version
    for name, newest in NEWEST_MEASURED.items():
        try:
            newer = versions[name] is not None and Version(versions[name]).release > \
                Version(newest).release
        except InvalidVersion:
            newer = False
        if newer:
            warnings.warn(f'{name} {versions[name]} is newer than any stack mmrep was measured '
                          f'on (up to {name} {newest}): if something fails, '
                          'docs/en/get_started.md lists the measured stacks')
