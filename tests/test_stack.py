"""The stack mmrep installs into: declared ranges, the check at ``import mmrep``, the
det / seg extras, the torch version shims, and that installing mmrep changes nothing else.

These run on every stack (``pytest -m compat`` in the classic venv: make test-compat).
"""
import glob
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest
import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from conftest import REPO_ROOT
from mmrep import compat
from mmrep import version as mmrep_version

LOCKS = sorted(glob.glob(osp.join(REPO_ROOT, 'requirements', '*.txt')))


def read_lock(path: str):
    """({header: value}, {name: version}) of requirements/<stack>.txt."""
    text = open(path).read()
    headers = dict(re.findall(r'^# ([a-z-]+): *(\S+)', text, re.M))
    pins = {m.group(1).lower(): m.group(2)
            for m in re.finditer(r'^([A-Za-z0-9_.-]+)==([^\s;]+)', text, re.M)}
    return headers, pins


def declared_ranges() -> dict:
    ranges = dict(mmrep_version.RUNTIME_REQUIRES)
    for table in mmrep_version.CODEBASE_EXTRAS.values():
        ranges.update(table)
    return {name: spec for name, spec in ranges.items() if spec}


def test_the_three_stacks_exist():
    assert {osp.basename(p)[:-4] for p in LOCKS} >= {'classic', 'current', 'newest'}


@pytest.mark.parametrize('lock', LOCKS, ids=lambda p: osp.basename(p)[:-4])
def test_every_stack_lies_inside_the_declared_ranges(lock):
    """A range that excluded a measured stack would make pip change that stack's packages."""
    headers, pins = read_lock(lock)
    assert re.fullmatch(r'3\.\d+', headers.get('python', '')), 'no "# python: X.Y" header'
    assert headers.get('python') + '.0' in SpecifierSet(mmrep_version.PYTHON_REQUIRES)
    assert headers.get('mmcv-cxx-std') == 'default' or re.fullmatch(
        r'c\+\+\d\d', headers.get('mmcv-cxx-std', '')), 'no "# mmcv-cxx-std:" header'
    for name in ('torch', 'torchvision', 'mmcv'):
        assert name in pins, f'{osp.basename(lock)} pins no {name}'
    for name, spec in declared_ranges().items():
        if name in pins:
            assert SpecifierSet(spec).contains(Version(pins[name]), prereleases=True), \
                f'{osp.basename(lock)} pins {name}=={pins[name]}, outside the declared {name}{spec}'


def test_setup_py_declares_ranges_and_extras(monkeypatch):
    import runpy
    import setuptools
    captured = {}
    monkeypatch.setattr(setuptools, 'setup', lambda **kwargs: captured.update(kwargs))
    monkeypatch.chdir(REPO_ROOT)
    runpy.run_path(osp.join(REPO_ROOT, 'setup.py'))
    assert captured['python_requires'] == '>=3.9,<3.13'
    requires = captured['install_requires']
    assert not [r for r in requires if '==' in r], requires
    assert not [r for r in requires if r.startswith(('mmdet', 'mmsegmentation'))], requires
    assert 'torch>=2.1' in requires and 'mmengine>=0.10.0,<1.0.0' in requires
    # as in mmdet's setup.py: pip must not build mmcv, whose ops are built for one torch
    assert not [r for r in requires if r.startswith('mmcv')], requires
    extras = captured['extras_require']
    assert extras['mim'] == ['mmcv>=2.0.0,<2.2.0']
    assert extras['det'] == ['mmdet>=3.3.0,<3.4.0']
    assert extras['seg'][0] == 'mmsegmentation>=1.2.2,<1.3.0' and {'ftfy', 'regex'} <= set(extras['seg'])
    assert set(extras['all']) == set(extras['det']) | set(extras['seg'])


def test_unsupported_versions_name_what_is_installed_and_what_is_supported():
    good = {'torch': '2.1.2', 'torchvision': '0.16.2', 'mmengine': '0.10.7', 'mmcv': '2.1.0',
            'numpy': '1.26.4', 'packaging': '24.0', 'huggingface_hub': '0.24.0', 'mmdet': '3.3.0',
            'mmsegmentation': None}
    assert mmrep_version.stack_problems(good) == []
    assert mmrep_version.stack_problems({**good, 'torch': '2.1.2+cu121'}) == []
    problems = mmrep_version.stack_problems(
        {**good, 'torch': '1.13.1', 'mmcv': '2.2.0', 'mmdet': '2.28.2', 'mmsegmentation': '0.30.0'})
    assert problems == [
        'torch 1.13.1 is installed; mmrep supports torch>=2.1',
        'mmcv 2.2.0 is installed; mmrep supports mmcv>=2.0.0,<2.2.0',
        'mmdet 2.28.2 is installed; mmrep supports mmdet>=3.3.0,<3.4.0 (the mmrep[det] extra)',
        'mmsegmentation 0.30.0 is installed; mmrep supports mmsegmentation>=1.2.2,<1.3.0 '
        '(the mmrep[seg] extra)']
    missing = mmrep_version.stack_problems({**good, 'mmcv': None})
    assert missing == ['mmcv is not installed; mmrep needs mmcv>=2.0.0,<2.2.0 with its compiled ops '
                       '(mim install "mmcv>=2.0.0,<2.2.0", or scripts/setup_env.sh builds it)']
    assert mmrep_version.stack_problems({**good, 'mmengine': None}) == [
        'mmengine is not installed; mmrep needs mmengine>=0.10.0,<1.0.0']


def fake_distribution(folder, name: str, version: str) -> str:
    """A dist-info that importlib.metadata finds first when ``folder`` leads sys.path."""
    info = folder / f'{name}-{version}.dist-info'
    info.mkdir(parents=True)
    (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n')
    return str(folder)


def test_import_mmrep_with_an_old_torch_fails_with_one_message(tmp_path):
    env = dict(os.environ, PYTHONPATH=fake_distribution(tmp_path, 'torch', '1.13.1'))
    env.pop('MMREP_SKIP_VERSION_CHECK', None)
    done = subprocess.run([sys.executable, '-c', 'import mmrep'], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path))
    assert done.returncode != 0
    assert 'IncompatibleStackError: mmrep 0.1.0 does not support the installed packages' in done.stderr
    assert '- torch 1.13.1 is installed; mmrep supports torch>=2.1' in done.stderr
    # the check runs before anything imports torch, mmcv or mmdet
    frames = re.findall(r'File "([^"]+)"', done.stderr)
    assert frames and all(f == '<string>' or f.startswith(osp.join(REPO_ROOT, 'mmrep'))
                          for f in frames), frames


def test_skip_variable_newer_torch_and_mmcv_lite_only_warn(monkeypatch):
    installed = {'torch': '1.13.1'}
    real = mmrep_version.installed_version
    monkeypatch.setattr(mmrep_version, 'installed_version',
                        lambda name, import_fallback=True:
                        installed[name] if name in installed else real(name, import_fallback))
    monkeypatch.delenv(mmrep_version.SKIP_CHECK_ENV, raising=False)
    with pytest.raises(mmrep_version.IncompatibleStackError, match='torch 1.13.1 is installed'):
        mmrep_version.check_installed_stack()
    monkeypatch.setenv(mmrep_version.SKIP_CHECK_ENV, '1')
    with pytest.warns(UserWarning, match='torch 1.13.1 is installed'):
        mmrep_version.check_installed_stack()
    monkeypatch.delenv(mmrep_version.SKIP_CHECK_ENV)
    installed['torch'] = '2.99.0'
    with pytest.warns(UserWarning, match=r'torch 2\.99\.0 is newer than any stack mmrep was measured on'):
        mmrep_version.check_installed_stack()
    # mmcv-lite (mmcv without its ops, as on Read the Docs): the range applies, ops are missing
    installed.update(torch='2.1.2', mmcv=None, **{'mmcv-lite': '2.1.0'})
    with pytest.warns(UserWarning, match='mmcv-lite 2.1.0 has no compiled ops'):
        mmrep_version.check_installed_stack()
    installed['mmcv-lite'] = '2.2.0'
    with pytest.raises(mmrep_version.IncompatibleStackError,
                       match=r'mmcv 2\.2\.0 is installed; mmrep supports mmcv>=2\.0\.0,<2\.2\.0'):
        mmrep_version.check_installed_stack()


def environment_without(tmp_path, hidden: tuple) -> str:
    """A site directory with links to every entry of this venv's but the ``hidden`` packages.

    Python started with ``-S`` and given this directory by ``site.addsitedir`` sees an
    environment where those packages were never installed (imports, metadata, pkg_resources).
    """
    site_dir = tmp_path / 'site-packages'
    site_dir.mkdir()
    purelib = sysconfig.get_paths()['purelib']
    pattern = re.compile(rf'^({"|".join(hidden)})([-_.].*\.dist-info|\.egg-info|)$', re.I)
    for entry in os.listdir(purelib):
        if not pattern.match(entry):
            os.symlink(osp.join(purelib, entry), site_dir / entry)
    return str(site_dir)


# runs in an environment without one codebase: imports mmrep, reads configs as mmrep's tools do
MISSING_CODEBASE_PROBE = textwrap.dedent('''
    import json, site, sys
    site.addsitedir(sys.argv[1])
    import mmrep
    from mmrep.engine.cli import read_config
    from mmrep.registry import installed_codebases
    result = {'codebases': installed_codebases(),
              'imported': sorted(m for m in ('mmdet', 'mmseg') if m in sys.modules)}
    for key, path in (('other', sys.argv[2]), ('own', sys.argv[3])):
        try:
            cfg = read_config(path)
            result[key] = 'ok ' + cfg.model.backbone.type
        except Exception as error:
            result[key] = f'{type(error).__name__}: {error}'
    print(json.dumps(result))
''')


@pytest.mark.parametrize('missing,extra,other_config,own_config', [
    ('mmseg', 'seg', 'upernet_repvgg-a0_camvid.py', 'retinanet_repvgg-a0_1x.py'),
    ('mmdet', 'det', 'retinanet_repvgg-a0_1x.py', 'upernet_repvgg-a0_camvid.py'),
])
def test_a_config_of_the_missing_codebase_names_the_extra(tmp_path, missing, extra, other_config,
                                                         own_config):
    hidden = ('mmseg', 'mmsegmentation') if missing == 'mmseg' else ('mmdet',)
    site_dir = environment_without(tmp_path, hidden)
    configs = osp.join(REPO_ROOT, 'configs')
    done = subprocess.run([sys.executable, '-S', '-c', MISSING_CODEBASE_PROBE, site_dir,
                           osp.join(configs, other_config), osp.join(configs, own_config)],
                          capture_output=True, text=True, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    present = 'mmdet' if missing == 'mmseg' else 'mmseg'
    assert result['codebases'] == [present] and result['imported'] == [present]
    assert result['own'] == 'ok RepVGG'
    assert result['other'].startswith('MissingCodebaseError: ')
    assert f"pip install 'mmrep[{extra}]'" in result['other'] and other_config in result['other']


def test_onnx_export_shims_fit_this_torch(tmp_path):
    import onnxruntime as ort
    import mmrep.deploy  # noqa: F401  (installs the default)
    has_switch = Version(torch.__version__).release >= (2, 5)
    assert compat.onnx_export_has_dynamo_switch() == has_switch
    assert compat.torchscript_onnx_export_kwargs() == ({'dynamo': False} if has_switch else {})
    assert getattr(torch.onnx.export, '_mmrep_torchscript_default', False) == has_switch
    export = torch.onnx.export
    compat.make_torchscript_onnx_export_default()
    assert torch.onnx.export is export  # installed once
    import torch.onnx.symbolic_opset9 as opset9
    assert callable(opset9._cast_Long)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    path = str(tmp_path / 'conv.onnx')
    torch.onnx.export(model, (x, ), path, opset_version=13, input_names=['x'])
    out = ort.InferenceSession(path, providers=['CPUExecutionProvider']).run(None, {'x': x.numpy()})[0]
    assert abs(torch.from_numpy(out) - model(x).detach()).max() < 1e-5


def pip_dry_run(tmp_path, *targets) -> dict:
    """pip's report of installing ``targets`` into this venv, offline and without pip config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('PIP_')}
    env['PIP_CONFIG_FILE'] = os.devnull  # no machine-wide constraints, indexes or find-links
    report = tmp_path / f'report{len(list(tmp_path.glob("report*")))}.json'
    done = subprocess.run([sys.executable, '-m', 'pip', 'install', '--dry-run', '--no-index',
                           '--no-build-isolation', '--disable-pip-version-check', '--quiet',
                           '--report', str(report), *targets],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert done.returncode == 0, (
        f'pip could not install {targets} from what is installed (it would need to download or '
        f'change packages):\n{done.stderr[-3000:]}')
    return json.loads(report.read_text())


def changes(report: dict) -> list:
    """What pip would install besides mmrep, as 'name old -> new'."""
    from importlib import metadata
    out = []
    for item in report['install']:
        name, new = item['metadata']['name'], item['metadata']['version']
        if name.lower() != 'mmrep':
            try:
                old = metadata.version(name)
            except metadata.PackageNotFoundError:
                old = 'not installed'
            out.append(f'{name} {old} -> {new}')
    return out


def test_installing_mmrep_changes_no_installed_package(tmp_path):
    """Into this stack (make test-compat: the classic one), pip install of the wheel and of the
    source tree (editable) adds mmrep and nothing else: no upgrade, downgrade or rebuild."""
    wheels = tmp_path / 'wheels'
    env = {k: v for k, v in os.environ.items() if not k.startswith('PIP_')}
    env['PIP_CONFIG_FILE'] = os.devnull
    # built from a copy: setuptools builds in the source tree (build/)
    source = tmp_path / 'mmrep-src'
    shutil.copytree(REPO_ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        '.git', '.venv*', 'work_dirs', 'build', 'data', 'docs', 'benchmarks', 'tests',
        '__pycache__', '*.egg-info'))
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                    '--disable-pip-version-check', '--quiet', '-w', str(wheels), str(source)],
                   check=True, capture_output=True, env=env, cwd=str(tmp_path))
    wheel, = wheels.glob('mmrep-*.whl')
    for target in (f'{wheel}[det]', f'{wheel}[all]', f'{REPO_ROOT}[all]'):
        args = ('-e', target) if target.startswith(REPO_ROOT) else (target, )
        report = pip_dry_run(tmp_path, *args)
        assert [i['metadata']['name'] for i in report['install']] == ['mmrep'], changes(report)


def test_every_module_runs_on_the_oldest_supported_python():
    """python_requires starts at 3.9: every module parses with 3.9's grammar, and a ``X | Y``
    annotation (evaluated at import before 3.10) only appears under ``from __future__ import
    annotations``."""
    import ast
    oldest = tuple(int(p) for p in re.match(r'>=(\d+)\.(\d+)', mmrep_version.PYTHON_REQUIRES).groups())
    assert oldest == (3, 9)
    files = glob.glob(osp.join(REPO_ROOT, 'mmrep', '**', '*.py'), recursive=True)
    files += glob.glob(osp.join(REPO_ROOT, 'tools', '*.py'))
    files.append(osp.join(REPO_ROOT, '_mmrep_startup_hook.py'))
    assert len(files) > 30
    late = []
    for path in files:
        source = open(path).read()
        try:
            tree = ast.parse(source, feature_version=oldest)
        except SyntaxError as error:
            late.append(f'{path}:{error.lineno}: {error.msg}')
            continue
        if 'from __future__ import annotations' in source:
            continue
        annotations = [node.annotation for node in ast.walk(tree)
                       if isinstance(node, (ast.arg, ast.AnnAssign)) and node.annotation is not None]
        annotations += [node.returns for node in ast.walk(tree)
                        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns]
        late += [f'{path}:{node.lineno}: X | Y annotation without the __future__ import'
                 for annotation in annotations for node in ast.walk(annotation)
                 if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)]
    assert not late, '\n'.join(late)
    # ast's feature_version is best effort: where pyenv has a 3.9, its compiler has the last word
    pythons = sorted(glob.glob(osp.join(os.environ.get('PYENV_ROOT', osp.expanduser('~/.pyenv')),
                                        'versions', '3.9.*', 'bin', 'python3.9')))
    if pythons:
        done = subprocess.run([pythons[-1], '-c', 'import sys\nfor p in sys.argv[1:]: '
                               'compile(open(p).read(), p, "exec")', *files],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
