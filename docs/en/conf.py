"""Sphinx configuration of mmrep's documentation (MyST Markdown sources in docs/en/).

``make docs`` builds it with warnings as errors and nitpicky cross-references
(``-W --keep-going -n``), offline: no intersphinx, MathJax served from the
build itself (sphinx-mathjax-offline).
"""
import importlib
import os.path as osp
import re
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)  # the mmrep of this checkout, also without an install

version_ns = {}
with open(osp.join(ROOT, 'mmrep', 'version.py')) as f:
    exec(f.read(), version_ns)

project = 'mmrep'
author = 'mmrep contributors'
copyright = 'mmrep contributors'
release = version_ns['__version__']
version = release

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    'sphinx-mathjax-offline',
]

source_suffix = {'.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build']

# MyST: $...$ / $$...$$ math, ::: fences, {ref}-able heading anchors up to ###.
myst_enable_extensions = ['dollarmath', 'amsmath', 'colon_fence', 'deflist']
myst_heading_anchors = 3

# Google-style docstrings (napoleon), members in source order, type hints in the signature.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = 'bysource'
autodoc_typehints = 'signature'
autodoc_default_options = {'members': True}
# A forward() without a docstring of its own would show torch's nn.Module one.
autodoc_inherit_docstrings = False

# Nitpicky, offline: names of other packages cannot resolve without intersphinx
# (which would fetch their inventories). These patterns cover ONLY third-party
# and standard-library names; every mmrep object must resolve
# (tests/test_docs.py checks that no pattern matches an mmrep name).
THIRD_PARTY_PACKAGES = ('torch', 'torchvision', 'numpy', 'np', 'mmengine', 'mmcv', 'mmdet', 'mmseg',
                        'mmdeploy', 'onnx', 'onnxruntime', 'ort', 'timm', 'mmpretrain',
                        'safetensors', 'nn', 'F')
STANDARD_LIBRARY = ('typing', 'collections', 'collections.abc', 'argparse', 'pathlib', 'types',
                    'os', 'logging', 'contextlib', 'dataclasses', 'enum', 'abc', 'pickle', '_pickle')
BUILTIN_NAMES = ('int', 'float', 'str', 'bool', 'bytes', 'dict', 'list', 'tuple', 'set', 'None',
                 'object', 'type', 'callable', 'Exception', 'ValueError', 'TypeError', 'KeyError',
                 'RuntimeError', 'FileNotFoundError', 'FileExistsError', 'OSError',
                 'ImportError', 'AttributeError', 'Any', 'Optional', 'Union', 'Tuple', 'List',
                 'Dict', 'Iterable', 'Iterator', 'Sequence', 'Mapping', 'Callable', 'Tensor',
                 'ModuleType', 'Path', 'Namespace',
                 # napoleon's keyword in 'Args: x (T, optional)'
                 'optional',
                 # short names of torch / mmengine classes that docstrings mention by name
                 'Module', 'Dropout', 'BatchNorm', 'Runner')
nitpick_ignore_regex = [
    (r'py:.*', r'(%s)(\..+)?' % '|'.join(re.escape(p) for p in THIRD_PARTY_PACKAGES)),
    (r'py:.*', r'(%s)\..+' % '|'.join(re.escape(p) for p in STANDARD_LIBRARY)),
    (r'py:.*', r'(%s)' % '|'.join(re.escape(n) for n in BUILTIN_NAMES)),
]

html_theme = 'furo'
html_title = f'mmrep {release}'
html_static_path = []
html_theme_options = {'navigation_with_keys': True}
# the pages show local files only: no remote fonts or scripts
html_permalinks_icon = '#'


def resolve_short_mmrep_name(app, env, node, contnode):
    """Resolve a short name in a docstring (``:class:`ConvBN```) to the one mmrep object it names.

    Docstrings name mmrep's classes and functions as their modules see them,
    without the package path. Sphinx looks such a name up only in the current
    module and class. This looks for it, in order, as a member of the current
    class or one of its bases (``:meth:`reparameterize``` in a subclass), then
    as the one documented mmrep object whose name ends with it. Several or
    none: the reference stays unresolved, and the nitpicky build fails on it.
    """
    if node.get('refdomain') != 'py':
        return None
    target = node['reftarget'].lstrip('~.')
    domain = env.get_domain('py')
    objtypes = set(domain.objtypes_for_role(node['reftype']) or ())
    documented = {name for name, obj in domain.objects.items()
                  if name.startswith('mmrep.') and obj.objtype in objtypes and not obj.aliased}
    candidates = [f'{base.__module__}.{base.__qualname__}.{target}'
                  for base in _class_and_bases(node.get('py:module'), node.get('py:class'))]
    found = next((name for name in candidates if name in documented), None)
    if found is None:
        matches = [name for name in documented if name.endswith('.' + target)]
        if len(matches) != 1:
            return None
        found = matches[0]
    return domain.resolve_xref(env, node['refdoc'], app.builder, node['reftype'], found,
                               node, contnode)


def _class_and_bases(module_name, class_name):
    """The mmrep class a reference was written in, then its mmrep bases (MRO order)."""
    if not module_name or not class_name or not module_name.startswith('mmrep'):
        return []
    cls = importlib.import_module(module_name)
    for part in class_name.split('.'):
        cls = getattr(cls, part, None)
    if not isinstance(cls, type):
        return []
    return [base for base in cls.__mro__ if base.__module__.startswith('mmrep')]


def setup(app):
    app.connect('missing-reference', resolve_short_mmrep_name)
