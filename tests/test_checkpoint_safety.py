"""mmrep's restricted unpickler: what a checkpoint's pickle may name, call, create and change.

A payload is refused (and never runs), with the refused object named and the
opt-in explained; mmengine's, timm's and numpy's legitimate contents load.
The routes that reach the loader (URLs, --resume, init_cfg, tools) are in
test_safe_loading_routes.py.
"""
import argparse
import copyreg
import io
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint
from torch import nn

import mmrep  # noqa: F401  (registers the safe loader for every mmengine scheme)
from mmrep import checkpoint as safe
from mmrep.checkpoint import (TRUSTED_ENV, NotACheckpointError, UntrustedCheckpointError,
                              load_checkpoint_file, restricted_load)

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct


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


class Custom:
    """A user's own class: refused until allowed explicitly."""

    def __init__(self, value=0):
        self.value = value


def payload_checkpoint(tmp_path, legacy=False):
    marker = tmp_path / 'payload_ran'
    path = tmp_path / ('payload_legacy.pth' if legacy else 'payload.pth')
    torch.save({'state_dict': nn.Linear(2, 2).state_dict(), 'meta': {'x': Payload(marker)}}, path,
               _use_new_zipfile_serialization=not legacy)
    return str(path), marker


def loads(data: bytes):
    return restricted_load(io.BytesIO(data))


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_payload_checkpoint_is_refused_and_never_runs(tmp_path, legacy):
    """Item 4: the legacy (non-zip) format too is refused with the type named and the opt-in."""
    path, marker = payload_checkpoint(tmp_path, legacy)
    for load in (lambda: _load_checkpoint(path, map_location='cpu'),
                 lambda: load_checkpoint(nn.Linear(2, 2), path),
                 lambda: load_checkpoint_file(path)):
        with pytest.raises(UntrustedCheckpointError) as err:
            load()
        message = str(err.value)
        assert 'posix.system' in message or 'nt.system' in message  # the refused type, named
        assert f'{TRUSTED_ENV}={os.path.abspath(path)}' in message  # how to opt in
    assert not marker.exists()


def test_getattr_beyond_history_buffer_methods_is_refused(tmp_path):
    path = tmp_path / 'escape.pth'
    torch.save({'meta': {'x': Escape()}}, path)
    with pytest.raises(UntrustedCheckpointError, match=r"getattr\(HistoryBuffer, '__init__'\)"):
        _load_checkpoint(str(path), map_location='cpu')


def test_refusals_do_not_depend_on_the_wording_of_torch(tmp_path, monkeypatch):
    """Item 5: the loader decides itself; torch's weights-only unpickler (and its messages,
    which the old loader matched) plays no part, even if torch rewords or changes it."""
    from torch import _weights_only_unpickler

    def reworded(self):
        raise pickle.UnpicklingError('torch 9 says: this pickle is not welcome')

    monkeypatch.setattr(_weights_only_unpickler.Unpickler, 'load', reworded)
    path = tmp_path / 'escape.pth'
    torch.save({'meta': {'x': Escape()}}, path)
    with pytest.raises(UntrustedCheckpointError, match=r"getattr\(HistoryBuffer, '__init__'\)"):
        _load_checkpoint(str(path), map_location='cpu')
    torch.save({'state_dict': nn.Linear(2, 2).state_dict()}, tmp_path / 'ok.pth')
    assert set(_load_checkpoint(str(tmp_path / 'ok.pth'))['state_dict']) == {'weight', 'bias'}


def test_explicit_opt_in_loads_a_trusted_file_fully(tmp_path, monkeypatch):
    path, marker = payload_checkpoint(tmp_path)
    monkeypatch.setenv(TRUSTED_ENV, os.pathsep.join(['/nonexistent.pth', path]))
    with pytest.warns(UserWarning, match='full unpickling'):
        _load_checkpoint(path, map_location='cpu')
    assert marker.exists()  # the user asked for it: the file was fully unpickled


def test_allow_globals_admits_exactly_the_named_type(tmp_path, monkeypatch):
    monkeypatch.setattr(safe, '_USER_ALLOWED', {})
    torch.save({'meta': {'custom': Custom(3)}}, tmp_path / 'custom.pth')
    with pytest.raises(UntrustedCheckpointError, match=f'{__name__}.Custom'):
        load_checkpoint_file(tmp_path / 'custom.pth')
    safe.allow_globals([Custom])
    assert load_checkpoint_file(tmp_path / 'custom.pth')['meta']['custom'].value == 3
    path, marker = payload_checkpoint(tmp_path)
    with pytest.raises(UntrustedCheckpointError):  # nothing else came with it
        load_checkpoint_file(path)
    assert not marker.exists()


def test_mmengine_checkpoint_contents_load_safely(tmp_path):
    hub = MessageHub.get_instance('mmrep_safety_test')
    hub.update_scalar('train/loss', 0.5)
    hub.update_scalar('train/lr', np.float64(0.01))
    hub.update_info('best_score', np.float32(0.3))
    ckpt = {'meta': {'epoch': 1, 'iter': np.int64(7), 'dataset_meta': {'classes': ('a', 'b')},
                     'flags': np.array([True, False]), 'big_endian': np.arange(3, dtype='>i4'),
                     'complex': np.complex64(1 + 2j), 'half': np.float16(0.5)},
            'state_dict': nn.Linear(2, 2).state_dict(), 'message_hub': hub.state_dict(),
            'ema_state_dict': {'steps': torch.tensor(3)},
            'args': argparse.Namespace(model='repvgg_a0', lr=0.1, sched=['cosine']),  # timm
            'extras': {'bytes': b'\x00\x01', 'set': {1, 2}, 'frozen': frozenset({3}),
                       'size': torch.Size([2, 3]), 'device': torch.device('cpu'),
                       'param': nn.Parameter(torch.ones(2)), 'bf16': torch.ones(2).bfloat16()}}
    path = str(tmp_path / 'ok.pth')
    torch.save(ckpt, path)
    for loaded in (_load_checkpoint(path, map_location='cpu'),
                   load_checkpoint_file(path, mmap=True)):
        buffer = loaded['message_hub']['log_scalars']['train/loss']
        assert isinstance(buffer, HistoryBuffer) and buffer.current() == 0.5
        assert buffer.statistics('mean') == 0.5  # statistics methods came back through getattr
        meta = loaded['meta']
        assert meta['iter'] == 7 and meta['dataset_meta']['classes'] == ('a', 'b')
        assert meta['flags'].tolist() == [True, False] and meta['big_endian'].tolist() == [0, 1, 2]
        assert meta['complex'] == np.complex64(1 + 2j) and meta['half'] == np.float16(0.5)
        assert loaded['args'].sched == ['cosine']
        extras = loaded['extras']
        assert extras['bytes'] == b'\x00\x01' and extras['set'] == {1, 2}
        assert extras['size'] == torch.Size([2, 3]) and extras['param'].requires_grad
        assert extras['bf16'].dtype == torch.bfloat16


def test_numpy_1_names_and_python_2_names_load():
    """Checkpoints written under numpy 1 name numpy.core.multiarray; protocol 2, __builtin__."""
    data = pickle.dumps({'x': np.float64(2.5), 'a': np.arange(3.0), 's': {1}}, protocol=2)
    data = data.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
    assert b'numpy.core.multiarray' in data and b'__builtin__' in data
    loaded = loads(data)
    assert loaded['x'] == 2.5 and loaded['a'].tolist() == [0.0, 1.0, 2.0] and loaded['s'] == {1}


class Reduce:
    """Pickles as ``func(*args)``, with ``state`` set by BUILD if given."""

    def __init__(self, func, args, *state):
        self.value = (func, args) + state

    def __reduce__(self):
        return self.value


class HistoryBufferState:
    """Pickles as a HistoryBuffer (NEWOBJ) with the given state."""

    __class__ = property(lambda self: HistoryBuffer)  # pickle checks NEWOBJ's class against it

    def __init__(self, state):
        self.state = state

    def __reduce_ex__(self, protocol):
        return copyreg.__newobj__, (HistoryBuffer,), self.state


def dtype_with_state(code, state):
    return Reduce(np.dtype, (code, False, True), state)


NUMERIC_STATE = (3, '<', None, None, None, -1, -1, 0)
REFUSED = {
    'os.system': (Reduce(os.system, ('true',)), r'posix\.system|nt\.system'),
    'object dtype': (dtype_with_state('O8', (3, '|', None, None, None, -1, -1, 63)),
                     'only numeric dtypes'),
    'void dtype': (dtype_with_state('V8', NUMERIC_STATE), 'only numeric dtypes'),
    'string dtype': (dtype_with_state('U4', NUMERIC_STATE), 'only numeric dtypes'),
    'datetime dtype': (dtype_with_state('M8', NUMERIC_STATE), 'only numeric dtypes'),
    'forged dtype flags': (dtype_with_state('f8', (3, '<', None, None, None, -1, -1, 63)),
                           'only the state numpy writes'),
    'forged dtype fields': (dtype_with_state('f8', (3, '|', None, ('a',), {'a': 1}, 8, 1, 0)),
                            'only the state numpy writes'),
    'array with too few bytes': (
        Reduce(_reconstruct, (np.ndarray, (0,), b'b'), (1, (4,), np.dtype('f8'), False, b'x')),
        'only numeric arrays'),
    'array subclass': (Reduce(_reconstruct, (np.matrix, (0,), b'b')), 'numpy.matrix'),
    'array called directly': (Reduce(np.ndarray, ((2,), 'O')), 'calling numpy.ndarray'),
    'scalar with too few bytes': (Reduce(np.core.multiarray.scalar, (np.dtype('f8'), b'x')),
                                  'only numeric scalars'),
    'codec other than latin1': (Reduce(__import__('_codecs').encode, ('x', 'rot13')),
                                "only encode\\(str, 'latin1'\\)"),
    'getattr on another object': (Reduce(getattr, (HistoryBuffer, '__class__')),
                                  "refused getattr\\(HistoryBuffer, '__class__'\\)"),
    'history buffer state': (HistoryBufferState({'__class__': 1}), 'HistoryBuffer state with keys'),
    'history buffer method swap': (
        HistoryBufferState({'statistics_methods': {'min': HistoryBuffer.max}}),
        "statistics method 'min'"),
    'state of a torch.Size': (Reduce(torch.Size, ((1,),), {'x': 1}),
                              'setting the state of a torch.Size'),
    'state of a function': (Reduce(getattr, (HistoryBuffer, 'min'), {'__code__': 1}),
                            'setting the state of mmengine'),
    # torch's tensor-subclass rebuild calls its first argument: the same rules apply to it
    'call through _rebuild_from_type_v2': (
        Reduce(torch._tensor._rebuild_from_type_v2, (np.ndarray, torch.Tensor, ((2,), 'O'), {})),
        'calling numpy.ndarray'),
    'unchecked dtype through _rebuild_from_type_v2': (
        Reduce(torch._tensor._rebuild_from_type_v2, (np.dtype, torch.Tensor, ('O8', False, True),
                                                     {})), 'only numeric dtypes'),
    '_rebuild_from_type_v2 of a non-tensor type': (
        Reduce(torch._tensor._rebuild_from_type_v2, (torch.Size, HistoryBuffer, ((1,),), {})),
        'non-tensor type'),
}


@pytest.mark.parametrize('name', list(REFUSED))
def test_refused_contents(name):
    obj, message = REFUSED[name]
    with pytest.raises(UntrustedCheckpointError, match=message):
        loads(pickle.dumps({'x': obj}, protocol=2))


RAW_REFUSED = {  # hand-written opcodes that torch.save never writes
    'BUILD on a class': (b'\x80\x02cmmengine.logging.history_buffer\nHistoryBuffer\n'
                         b'}X\x03\x00\x00\x00barK\x01sb.', 'setting the state of mmengine'),
    'SETITEM on a list': (b'\x80\x02]K\x01K\x02s.', 'set an item of a builtins.list'),
    'APPEND to a dict': (b'\x80\x02}K\x01a.', 'append to a builtins.dict'),
    'ADDITEMS to a list': (b'\x80\x04\x95\x06\x00\x00\x00\x00\x00\x00\x00](K\x01\x90.',
                           'add to a builtins.list'),
    'INST': (b'(i__builtin__\nset\n.', "opcode b'i'"),
    'OBJ': (b'\x80\x02(c__builtin__\nset\no.', "opcode b'o'"),
    'EXT1': (b'\x80\x02\x82\x01.', "opcode b'\\\\x82'"),
    'NEWOBJ of a function': (b'\x80\x02c_codecs\nencode\n)\x81.', 'creating _codecs.encode'),
    'NEWOBJ_EX': (b'\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00cbuiltins\nset\n)}\x92.',
                  "opcode b'\\\\x92'"),
}


@pytest.mark.parametrize('name', list(RAW_REFUSED))
def test_refused_opcodes_and_targets(name):
    data, message = RAW_REFUSED[name]
    with pytest.raises(UntrustedCheckpointError, match=message):
        loads(data)


def test_refused_globals_are_never_imported():
    for module in ('this', 'antigravity'):  # both print or open a browser when imported
        assert module not in sys.modules
        with pytest.raises(UntrustedCheckpointError, match=f'{module}.x'):
            loads(b'\x80\x02c' + module.encode() + b'\nx\n.')
        assert module not in sys.modules


def test_forged_structured_dtype_is_refused_without_crashing(tmp_path):
    """Item 3: a numpy dtype whose forged flags hide an object field made the old loader's
    result crash the process (SIGSEGV) when read. The check runs in a child process."""
    path = tmp_path / 'forged.pth'
    forged_dtype = dtype_with_state('V8', (3, '|', None, ('a',), {'a': (np.dtype('O'), 0)},
                                           8, 1, 0))
    forged = Reduce(_reconstruct, (np.ndarray, (0,), b'b'),
                    (1, (1,), forged_dtype, False, b'\x41' * 8))
    torch.save({'meta': {'x': forged}}, path)
    script = textwrap.dedent(f'''
        import mmrep
        from mmengine.runner.checkpoint import _load_checkpoint
        from mmrep.checkpoint import UntrustedCheckpointError
        try:
            value = _load_checkpoint({str(path)!r}, map_location='cpu')['meta']['x']
            print('LOADED', value[0])  # reading the forged object field dereferences b'AAAAAAAA'
        except UntrustedCheckpointError as err:
            print('REFUSED', err)
        ''')
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f'the child process died: {done.returncode}\n{done.stderr}'
    assert 'REFUSED' in done.stdout and 'only numeric dtypes' in done.stdout, done.stdout


def test_meta_config_is_dropped_with_a_warning_unless_trusted(tmp_path, monkeypatch):
    """Item 1 (the loader's part): mmengine's Runner.resume executes meta['config']."""
    path = tmp_path / 'mmcv1.pth'
    torch.save({'meta': {'config': "__import__('os').system('true')", 'cfg': 'x = 1',
                         'epoch': 1}, 'state_dict': {}}, path)
    with pytest.warns(UserWarning, match=r"dropped meta\['config'\]"):
        meta = _load_checkpoint(str(path))['meta']
    assert meta == {'cfg': 'x = 1', 'epoch': 1}
    monkeypatch.setenv(TRUSTED_ENV, str(path))
    assert 'config' in load_checkpoint_file(path)['meta']


@pytest.mark.parametrize('content, what', [
    (b'<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>',
     'an HTML page'),
    (b'', 'empty'),
    (b'{"error": "not found"}', r'text \(JSON\?\)'),
    (b'PK\x03\x04' + b'\x00' * 40, 'a damaged or truncated zip archive'),
    (b'\x80\x02K\x01.', r"binary data starting b'\\x80\\x02K\\x01.'"),
])
def test_a_file_that_is_not_a_checkpoint_is_named_so(tmp_path, content, what, monkeypatch):
    """Item 7: no advice to unpickle an HTML page fully; say that it is no checkpoint."""
    path = tmp_path / 'RepVGG-A0-train.pth'
    path.write_bytes(content)
    for trusted in (False, True):
        with pytest.raises(NotACheckpointError, match=f'is {what}.*check the download'):
            load_checkpoint_file(path, trusted=trusted)
    with pytest.raises(NotACheckpointError):
        _load_checkpoint(str(path))


def test_truncated_and_other_archives(tmp_path):
    torch.save({'w': torch.zeros(1000)}, tmp_path / 'full.pth')
    data = (tmp_path / 'full.pth').read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
    with pytest.raises(NotACheckpointError, match='damaged or truncated zip archive'):
        load_checkpoint_file(tmp_path / 'cut.pth')
    import zipfile
    with zipfile.ZipFile(tmp_path / 'other.pth', 'w') as archive:
        archive.writestr('readme.txt', 'hello')
    with pytest.raises(NotACheckpointError, match=r'zip archive without data.pkl \(holds readme'):
        load_checkpoint_file(tmp_path / 'other.pth')
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(tmp_path / 'scripted.pth'))
    with pytest.raises(NotACheckpointError, match='TorchScript archive'):
        load_checkpoint_file(tmp_path / 'scripted.pth')


def test_torch_force_weights_only_load_is_honoured(tmp_path, monkeypatch):
    """With TORCH_FORCE_WEIGHTS_ONLY_LOAD torch refuses a custom unpickler: torch's own decides."""
    monkeypatch.setenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '1')
    torch.save({'state_dict': nn.Linear(2, 2).state_dict()}, tmp_path / 'ok.pth')
    assert set(load_checkpoint_file(tmp_path / 'ok.pth')['state_dict']) == {'weight', 'bias'}
    path, marker = payload_checkpoint(tmp_path)
    with pytest.raises(UntrustedCheckpointError, match='TORCH_FORCE_WEIGHTS_ONLY_LOAD'):
        load_checkpoint_file(path)
    assert not marker.exists()
