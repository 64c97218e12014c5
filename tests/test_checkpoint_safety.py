"""After ``import mmrep`` checkpoints load with weights_only=True plus mmengine's own types:
a pickle payload is refused (and never runs), mmengine checkpoints still load."""
import os

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint
from torch import nn

import mmrep  # noqa: F401  (registers the safe local-file loader)
from mmrep.compat import TRUSTED_ENV, UntrustedCheckpointError


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


class Escape:
    """A pickle that reaches HistoryBuffer.__init__ through getattr, as an escape would start."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, '__init__')


def payload_checkpoint(tmp_path):
    marker = tmp_path / 'payload_ran'
    path = tmp_path / 'payload.pth'
    torch.save({'state_dict': nn.Linear(2, 2).state_dict(), 'meta': {'x': Payload(marker)}}, path)
    return str(path), marker


def test_payload_checkpoint_is_refused_and_never_runs(tmp_path):
    path, marker = payload_checkpoint(tmp_path)
    for load in (lambda: _load_checkpoint(path, map_location='cpu'),
                 lambda: load_checkpoint(nn.Linear(2, 2), path)):
        with pytest.raises(UntrustedCheckpointError) as err:
            load()
        message = str(err.value)
        assert 'posix.system' in message or 'nt.system' in message  # the refused type, named
        assert TRUSTED_ENV in message and 'add_safe_globals' in message  # how to opt in
    assert not marker.exists()


def test_getattr_beyond_history_buffer_methods_is_refused(tmp_path):
    path = tmp_path / 'escape.pth'
    torch.save({'meta': {'x': Escape()}}, path)
    with pytest.raises(UntrustedCheckpointError, match=r"getattr\(HistoryBuffer, '__init__'\)"):
        _load_checkpoint(str(path), map_location='cpu')


def test_explicit_opt_in_loads_a_trusted_file_fully(tmp_path, monkeypatch):
    path, marker = payload_checkpoint(tmp_path)
    monkeypatch.setenv(TRUSTED_ENV, os.pathsep.join(['/nonexistent.pth', path]))
    with pytest.warns(UserWarning, match='full unpickling'):
        _load_checkpoint(path, map_location='cpu')
    assert marker.exists()  # the user asked for it: the file was fully unpickled


def test_mmengine_checkpoint_contents_load_safely(tmp_path):
    hub = MessageHub.get_instance('mmrep_safety_test')
    hub.update_scalar('train/loss', 0.5)
    hub.update_scalar('train/lr', np.float64(0.01))
    hub.update_info('best_score', np.float32(0.3))
    ckpt = {'meta': {'epoch': 1, 'iter': np.int64(7), 'dataset_meta': {'classes': ('a', 'b')}},
            'state_dict': nn.Linear(2, 2).state_dict(), 'message_hub': hub.state_dict(),
            'ema_state_dict': {'steps': torch.tensor(3)}}
    path = str(tmp_path / 'ok.pth')
    torch.save(ckpt, path)
    loaded = _load_checkpoint(path, map_location='cpu')
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer) and buffer.current() == 0.5
    assert buffer.statistics('mean') == 0.5  # statistics methods came back through getattr
    assert loaded['meta']['iter'] == 7 and loaded['meta']['dataset_meta']['classes'] == ('a', 'b')
