"""scripts/mmcv_wheel.sh and scripts/setup_env.sh: which mmcv build setup_env.sh makes (cpu or
cuda), which cached wheel it reuses, and the stacks it refuses. A stand-in ``nvcc`` on PATH plays
the CUDA toolkit; nothing is built or installed."""
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

SCRIPT = osp.join(REPO_ROOT, 'scripts', 'mmcv_wheel.sh')
WHEEL = 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl'
NVCC_VERSION = ('nvcc: NVIDIA (R) Cuda compiler driver',
                'Cuda compilation tools, release 12.1, V12.1.105')


def run(*args, path_dirs=(), env=None):
    # a PATH with the basic tools but no real nvcc or nvidia-smi
    base = [d for d in os.environ['PATH'].split(os.pathsep)
            if not any(osp.isfile(osp.join(d, tool)) for tool in ('nvcc', 'nvidia-smi'))]
    environ = {k: v for k, v in os.environ.items() if k not in ('CUDA_HOME', 'MMREP_MMCV_VARIANT')}
    environ.update(env or {}, PATH=os.pathsep.join([*map(str, path_dirs), *base]))
    done = subprocess.run(['bash', SCRIPT, *map(str, args)], capture_output=True, text=True,
                          env=environ)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), done.stderr


@pytest.fixture
def fake_nvcc(tmp_path):
    folder = tmp_path / 'cuda' / 'bin'
    folder.mkdir(parents=True)
    nvcc = folder / 'nvcc'
    nvcc.write_text('#!/bin/sh\n' + ''.join(f'echo "{line}"\n' for line in NVCC_VERSION))
    nvcc.chmod(0o755)
    assert subprocess.run([str(nvcc), '--version'], capture_output=True, text=True).stdout \
        .strip().endswith('V12.1.105')
    return folder


@pytest.fixture
def fake_gpu(tmp_path):
    """A stand-in nvidia-smi that lists one GPU."""
    folder = tmp_path / 'driver'
    folder.mkdir()
    smi = folder / 'nvidia-smi'
    smi.write_text('#!/bin/sh\necho "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-0)"\n')
    smi.chmod(0o755)
    return folder


def fake_python(tmp_path, cuda: bool):
    """A stand-in python whose torch is (or is not) a CUDA build."""
    py = tmp_path / ('py_cuda' if cuda else 'py_cpu')
    py.write_text(f'#!/bin/sh\nexit {0 if cuda else 1}\n')
    py.chmod(0o755)
    return py


def test_no_cuda_toolkit_builds_for_cpu():
    assert run('variant')[0] == 'cpu'


def test_nvcc_and_gpu_build_for_the_toolkits_cuda_release(fake_nvcc, fake_gpu, tmp_path):
    assert run('variant', path_dirs=[fake_nvcc, fake_gpu])[0] == 'cuda12.1'
    assert run('variant', fake_python(tmp_path, cuda=True),
               path_dirs=[fake_nvcc, fake_gpu])[0] == 'cuda12.1'
    assert run('build-env', 'cuda12.1')[0] == 'MMCV_WITH_OPS=1 FORCE_CUDA=1'
    assert run('build-env', 'cpu')[0] == 'MMCV_WITH_OPS=1 FORCE_CUDA=0'


def test_cuda_home_nvcc_is_found(fake_nvcc, fake_gpu):
    assert run('variant', path_dirs=[fake_gpu],
               env={'CUDA_HOME': str(fake_nvcc.parent)})[0] == 'cuda12.1'


def test_toolkit_without_gpu_builds_for_cpu_unless_asked(fake_nvcc):
    # as on the machine these tests were written on: a CUDA 13.0 toolkit but no GPU
    out, err = run('variant', path_dirs=[fake_nvcc])
    assert out == 'cpu' and 'no GPU' in err
    assert run('variant', path_dirs=[fake_nvcc],
               env={'MMREP_MMCV_VARIANT': 'cuda'})[0] == 'cuda12.1'


def test_cpu_torch_or_explicit_choice_keeps_cpu(fake_nvcc, fake_gpu, tmp_path):
    out, err = run('variant', fake_python(tmp_path, cuda=False), path_dirs=[fake_nvcc, fake_gpu])
    assert out == 'cpu' and 'torch is a CPU build' in err
    assert run('variant', path_dirs=[fake_nvcc, fake_gpu],
               env={'MMREP_MMCV_VARIANT': 'cpu'})[0] == 'cpu'


def test_cached_wheels_are_keyed_by_python_torch_and_variant(tmp_path):
    wheels = tmp_path / 'wheels'
    key = (wheels, '2.1.0', '3.11', '2.14.1')
    assert run('cache-dir', *key, 'cpu')[0] == str(wheels / 'mmcv-2.1.0-py3.11-torch2.14.1-cpu')
    assert run('cached', *key, 'cpu')[0] == ''  # nothing cached: build
    cpu = wheels / 'mmcv-2.1.0-py3.11-torch2.14.1-cpu'
    cpu.mkdir(parents=True)
    (cpu / WHEEL).write_text('')
    assert run('cached', *key, 'cpu')[0] == str(cpu / WHEEL)
    # ops built against one torch are never taken for another, nor a wheel for another Python
    assert run('cached', wheels, '2.1.0', '3.11', '2.15.0', 'cpu')[0] == ''
    assert run('cached', *key, 'cuda12.1')[0] == ''
    other_python = wheels / 'mmcv-2.1.0-py3.10-torch2.14.1-cpu'
    other_python.mkdir()
    (other_python / WHEEL).write_text('')  # a cp311 wheel in a py3.10 folder
    assert run('cached', wheels, '2.1.0', '3.10', '2.14.1', 'cpu')[0] == ''
    cuda = wheels / 'mmcv-2.1.0-py3.11-torch2.14.1-cuda12.1'
    cuda.mkdir()
    (cuda / WHEEL).write_text('')
    assert run('cached', *key, 'cuda12.1')[0] == str(cuda / WHEEL)


@pytest.mark.parametrize('legacy', ['mmcv-2.1.0-cpu/' + WHEEL, WHEEL])
def test_wheel_of_the_old_layout_is_adopted_for_its_own_stack_only(tmp_path, legacy):
    """Before the cache folder named Python and torch, setup_env.sh built only for Python 3.11
    and torch 2.14.1: such a wheel is hard-linked into its new folder and left where it was."""
    wheels = tmp_path / 'wheels'
    old = wheels / legacy
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text('built before the cache was keyed')
    assert run('adopt-legacy', wheels, '2.1.0', '3.10', '2.1.2', 'cpu')[0] == ''
    assert run('adopt-legacy', wheels, '2.1.0', '3.11', '2.15.0', 'cpu')[0] == ''
    assert run('adopt-legacy', wheels, '2.1.0', '3.11', '2.14.1', 'cuda12.1')[0] == ''
    new = wheels / 'mmcv-2.1.0-py3.11-torch2.14.1-cpu' / WHEEL
    assert run('adopt-legacy', wheels, '2.1.0', '3.11', '2.14.1', 'cpu')[0] == str(new)
    assert old.is_file() and os.path.samefile(old, new)
    assert run('cached', wheels, '2.1.0', '3.11', '2.14.1', 'cpu')[0] == str(new)
    assert run('adopt-legacy', wheels, '2.1.0', '3.11', '2.14.1', 'cpu')[0] == ''  # once


def setup_env(env, root=REPO_ROOT, cwd=None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith('MMREP_')}
    environ.update(env)
    return subprocess.run(['bash', osp.join(root, 'scripts', 'setup_env.sh')], capture_output=True,
                          text=True, env=environ, cwd=cwd)


def test_unknown_stack_lists_the_stacks(tmp_path):
    done = setup_env({'MMREP_STACK': 'clasic', 'MMREP_VENV': str(tmp_path / 'venv')})
    assert done.returncode != 0
    assert "unknown stack 'clasic'" in done.stderr
    assert 'the stacks are: classic current newest' in done.stderr
    assert not (tmp_path / 'venv').exists()


def test_a_venv_holding_another_stack_is_refused_untouched(tmp_path):
    venv = tmp_path / 'venv'
    (venv / 'bin').mkdir(parents=True)
    (venv / 'bin' / 'python').symlink_to(sys.executable)
    (venv / '.mmrep-stack').write_text('classic\n')
    before = sorted(p.name for p in venv.rglob('*'))
    done = setup_env({'MMREP_STACK': 'current', 'MMREP_VENV': str(venv)})
    assert done.returncode != 0
    assert "holds the stack 'classic', not 'current'" in done.stderr
    assert sorted(p.name for p in venv.rglob('*')) == before
    assert (venv / '.mmrep-stack').read_text() == 'classic\n'


def test_a_relative_venv_is_taken_from_the_current_directory(tmp_path):
    # the mmcv build runs in another directory: a relative venv path must be made absolute
    venv = tmp_path / 'project' / '.venv-x'
    (venv / 'bin').mkdir(parents=True)
    (venv / 'bin' / 'python').symlink_to(sys.executable)
    (venv / '.mmrep-stack').write_text('classic\n')
    done = setup_env({'MMREP_STACK': 'current', 'MMREP_VENV': '.venv-x'}, cwd=tmp_path / 'project')
    assert done.returncode != 0
    assert f"{venv} holds the stack 'classic'" in done.stderr


def test_a_stack_whose_python_is_missing_says_so(tmp_path):
    root = tmp_path / 'repo'
    shutil.copytree(osp.join(REPO_ROOT, 'scripts'), root / 'scripts')
    (root / 'requirements').mkdir()
    (root / 'requirements' / 'ancient.txt').write_text(
        '# python: 2.5\n# mmcv-cxx-std: default\n# extras: all\ntorch==0.4.1\nmmcv==2.1.0\n')
    (root / 'requirements' / 'broken.txt').write_text('torch==2.1.2\n')
    done = setup_env({'MMREP_STACK': 'ancient', 'MMREP_VENV': str(tmp_path / 'venv')}, root)
    assert done.returncode != 0 and "stack 'ancient' needs Python 2.5" in done.stderr
    assert not (tmp_path / 'venv').exists()
    done = setup_env({'MMREP_STACK': 'broken', 'MMREP_VENV': str(tmp_path / 'venv')}, root)
    assert done.returncode != 0 and "needs '# python: X.Y'" in done.stderr


def test_setup_env_uses_the_selection():
    text = open(osp.join(REPO_ROOT, 'scripts', 'setup_env.sh')).read()
    assert 'source "$ROOT/scripts/mmcv_wheel.sh"' in text
    assert 'FORCE_CUDA=0' not in text  # the build environment comes from mmcv_build_env
    assert subprocess.run(['bash', '-n', osp.join(REPO_ROOT, 'scripts', 'setup_env.sh')]).returncode == 0
