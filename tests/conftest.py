"""Test-wide settings.

One torch thread: on the 2 shared cores, two OpenMP threads make the many tiny
convs and einsums of these tests 10-200x slower.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), 'shared', 'data')


@pytest.fixture(autouse=True, scope='session')
def _private_weight_caches(tmp_path_factory):
    """Pretrained weights (by name, and their conversions) go to a temporary folder, never
    to ~/.cache, and the hub is an address where nothing listens: no test reaches the internet.
    Subprocesses inherit these variables."""
    root = tmp_path_factory.mktemp('weight-caches')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('MMREP_WEIGHTS_DIR', str(root / 'mmrep'))
        patch.setenv('HF_HOME', str(root / 'hf'))
        patch.setenv('HF_ENDPOINT', 'http://127.0.0.1:9')  # discard port: connection refused
        yield


@pytest.fixture(autouse=True, scope='session')
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def shared_data(name: str) -> str:
    """Path of a real data set in ../shared/data, or skip saying why (never under CI=true)."""
    path = os.path.join(SHARED_DATA, name)
    if not os.path.isdir(path):
        if os.environ.get('CI') == 'true':
            pytest.fail(f'CI=true but the real data {path} is missing')
        pytest.skip(f'real data {path} is absent on this machine')
    return path


def load_tool(name: str):
    """A fresh module of ``tools/<name>.py``, to call its functions as the command line does."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'mmrep_tool_{name}',
                                                  os.path.join(REPO_ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
