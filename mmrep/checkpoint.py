"""The one checkpoint loader: every route that reads a checkpoint file, without running its code.

A ``.pth`` file is a pickle, and unpickling can call any function it names.
mmrep loads every checkpoint with its own restricted unpickler instead
(:class:`RestrictedUnpickler`, handed to ``torch.load`` as its
``pickle_module``), so the same allow-list decides on every torch version,
2.1 (no ``torch.serialization.safe_globals``) to the newest. It admits:

- what torch's own weights-only unpickler admits for tensors (tensor and
  storage rebuild functions, dtypes, ``torch.Size``, ``torch.device``,
  ``OrderedDict``, ``Counter``, ``set``, ``complex``, ``bytearray``, bytes);
- what mmengine's ``Runner`` writes besides: its MessageHub's
  ``HistoryBuffer`` (with a ``getattr`` that returns its statistics methods
  and nothing else) and numpy scalars and arrays of **numeric** dtypes
  (bool, int, uint, float, complex; no object, void, string or structured
  dtype, and no dtype state other than the one numpy itself writes);
- ``argparse.Namespace`` (the ``args`` of timm's training checkpoints);
- whatever the user allows explicitly (:func:`allow_globals`, or on torch
  >= 2.4 ``torch.serialization.add_safe_globals``).

Besides the globals a pickle may name, the unpickler restricts what it may
do with them: call (``REDUCE``) only allowed functions, some with their
arguments checked; create (``NEWOBJ``) only allowed classes; set the state
(``BUILD``) of instances of the few types above only, each with its state
checked, and never of a class; add items only to plain lists, dicts and sets.
Opcodes that torch checkpoints never hold (``INST``, ``OBJ``, ``NEWOBJ_EX``,
extension codes, out-of-band buffers) are refused.

A file that holds anything else raises :class:`UntrustedCheckpointError`,
which names what was refused and how to opt in. A file that is not a PyTorch
checkpoint at all (an HTML page from a failed download, a truncated file)
raises :class:`NotACheckpointError`. A config stored as Python code in
``meta['config']`` (mmcv 1.x; mmengine's ``Runner.resume`` executes it) is
dropped with a warning.

Trusted files load with full unpickling when listed in the environment
variable ``MMREP_TRUSTED_CHECKPOINTS`` (paths separated by ``os.pathsep``;
for a URL, the downloaded copy the error message names) or when a tool is
told so (``trusted=True``, ``tools/convert_weights.py --unsafe-load``).

``import mmrep`` registers :func:`load_checkpoint_file` for every scheme of
mmengine's ``CheckpointLoader`` (local files; ``http(s)://`` and
``torchvision://``, ``open-mmlab://``, ``mmcls://`` that resolve to URLs;
``pavi://``; ``s3://``), so ``load_from``, ``--resume``, ``init_cfg``,
``tools/`` and mmdeploy all load through it.
"""
from __future__ import annotations

import _codecs
import argparse
import collections
import io
import math
import os
import os.path as osp
import pickle
import re
import types
import warnings
import zipfile
from typing import Any, Callable, Dict, Iterable, Optional, Union
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

TRUSTED_ENV = 'MMREP_TRUSTED_CHECKPOINTS'

__all__ = ['load_checkpoint_file', 'load_url', 'download_checkpoint', 'allow_globals',
           'UntrustedCheckpointError', 'NotACheckpointError', 'TRUSTED_ENV',
           'RestrictedUnpickler', 'is_trusted']


class UntrustedCheckpointError(pickle.UnpicklingError):
    """The checkpoint holds objects that the safe loader does not admit (named in the message)."""


class NotACheckpointError(ValueError):
    """The file is not a PyTorch checkpoint (an HTML page, a truncated download, ...)."""


# ----------------------------------------------------------------------------
# the allow-list


def history_buffer_method(owner, name: str):
    """``getattr`` as a pickled HistoryBuffer uses it (``getattr(HistoryBuffer, 'min')``), only.

    A general ``getattr`` would let a pickle walk from an allowed object to
    ``os.system``; this one returns public statistics methods of HistoryBuffer only.
    """
    if owner is not HistoryBuffer or type(name) is not str or name.startswith('_') \
            or not callable(getattr(HistoryBuffer, name, None)):
        raise UntrustedCheckpointError(
            f'refused getattr({getattr(owner, "__name__", type(owner).__name__)}, {name!r}): '
            'only the statistics methods of mmengine HistoryBuffer are allowed')
    return getattr(HistoryBuffer, name)


def _numpy_multiarray():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray
    return multiarray


_MULTIARRAY = _numpy_multiarray()
NUMERIC_KINDS = 'biufc'  # bool, int, uint, float, complex


def _numeric_dtype(dtype) -> bool:
    return (isinstance(dtype, np.dtype) and dtype.kind in NUMERIC_KINDS and dtype.fields is None
            and dtype.subdtype is None and not dtype.hasobject)


def _refuse(what: str):
    raise UntrustedCheckpointError(what)


def _check_dtype_args(args: tuple) -> None:
    # numpy pickles a dtype as numpy.dtype('f8', False, True) followed by BUILD
    if not (len(args) == 3 and type(args[0]) is str and re.fullmatch(r'[biufc]\d{1,2}', args[0])
            and all(type(a) is bool for a in args[1:])):
        _refuse(f'numpy.dtype{args!r}: only numeric dtypes (bool, int, uint, float, complex) '
                'are allowed')
    if not _numeric_dtype(np.dtype(args[0])):
        _refuse(f'numpy.dtype({args[0]!r}): not a numeric dtype')


def _check_scalar_args(args: tuple) -> None:
    # numpy.core.multiarray.scalar(dtype, raw bytes) rebuilds np.float64(0.5) & co.
    if not (len(args) == 2 and _numeric_dtype(args[0]) and type(args[1]) is bytes
            and len(args[1]) == args[0].itemsize):
        _refuse('numpy scalar: only numeric scalars (their raw bytes) are allowed')


def _check_reconstruct_args(args: tuple) -> None:
    # numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b'): an empty array, filled by BUILD
    if not (len(args) == 3 and args[0] is np.ndarray and type(args[1]) is tuple
            and all(type(d) is int and d >= 0 for d in args[1]) and args[2] in (b'b', 'b')):
        _refuse('numpy _reconstruct: only plain numpy.ndarray is allowed')


def _check_encode_args(args: tuple) -> None:
    # how protocol-2 pickles store bytes: _codecs.encode(str, 'latin1')
    if not (len(args) == 2 and type(args[0]) is str and args[1] in ('latin1', 'latin-1')):
        _refuse(f'_codecs.encode with arguments {tuple(type(a).__name__ for a in args)}: only '
                "encode(str, 'latin1') is allowed")


def _build_dtype(inst: np.dtype, state) -> None:
    # Only the state numpy itself writes for this dtype in this byte order: a
    # forged state (fields, flags) would make numpy read arbitrary memory.
    order = state[1] if type(state) is tuple and len(state) > 1 else None
    if order not in ('<', '>', '|'):
        _refuse(f'numpy dtype state {state!r}')
    expected = np.dtype(inst).newbyteorder(order) if order != '|' else np.dtype(inst)
    expected_state = expected.__reduce__()[2]
    if not (len(state) == len(expected_state)
            and all(type(a) is type(b) and a == b for a, b in zip(state, expected_state))):
        _refuse(f'numpy dtype state {state!r} for {inst!r}: only the state numpy writes for a '
                'numeric dtype is allowed')
    inst.__setstate__(state)


def _build_ndarray(inst: np.ndarray, state) -> None:
    if type(state) is tuple and len(state) == 4:
        state = (1,) + state
    if not (type(state) is tuple and len(state) == 5 and state[0] == 1 and type(state[0]) is int):
        _refuse('numpy array state: not the (version, shape, dtype, fortran, data) numpy writes')
    _, shape, dtype, fortran, data = state
    if not (type(shape) is tuple and all(type(d) is int and d >= 0 for d in shape)
            and _numeric_dtype(dtype) and type(fortran) is bool and type(data) is bytes
            and len(data) == math.prod(shape) * dtype.itemsize):
        _refuse(f'numpy array state with dtype {dtype!r}: only numeric arrays with their raw '
                'bytes are allowed')
    inst.__setstate__(state)


_HISTORY_BUFFER_STATE = {'max_length': int, '_log_history': np.ndarray,
                         '_count_history': np.ndarray, 'statistics_methods': dict}


def _build_history_buffer(inst: HistoryBuffer, state) -> None:
    if not (type(state) is dict and all(k in _HISTORY_BUFFER_STATE
                                        and type(v) is _HISTORY_BUFFER_STATE[k]
                                        for k, v in state.items())):
        _refuse(f'HistoryBuffer state with keys {list(state) if isinstance(state, dict) else "?"}')
    for name, method in state.get('statistics_methods', {}).items():
        # HistoryBuffer.__setstate__ adds these to a dict shared by the class
        if type(name) is not str or getattr(HistoryBuffer, name, None) is not method:
            _refuse(f'HistoryBuffer statistics method {name!r}')
    inst.__setstate__(state)


def _build_attributes(inst, state) -> None:
    # OrderedDict (a state dict's _metadata), argparse.Namespace: plain attributes
    if not (type(state) is dict and all(type(k) is str for k in state)):
        _refuse(f'the state of a {type(inst).__name__} must be a dict of attributes')
    inst.__dict__.update(state)


def _build_user_allowed(inst, state) -> None:
    # a type the user allowed explicitly: as pickle (and torch's weights-only unpickler) does it
    setstate = getattr(inst, '__setstate__', None)
    if setstate is not None:
        setstate(state)
        return
    slots = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slots = state
    if state:
        inst.__dict__.update(state)
    for key, value in (slots or {}).items():
        setattr(inst, key, value)


class AllowList:
    """What a checkpoint's pickle may name, call, create and set the state of."""

    def __init__(self):
        self.globals: Dict[str, Any] = {}     # 'module.name' -> object
        self.calls: Dict[int, Optional[Callable]] = {}  # id(callable) -> argument check
        self.classes: set = set()             # ids of classes NEWOBJ may create
        self.builds: Dict[type, Callable] = {}  # exact type -> BUILD handler
        self._keep = []                       # keeps the objects whose id is a key alive

    def name(self, qualname: str, obj) -> None:
        self.globals[qualname] = obj
        self._keep.append(obj)

    def call(self, obj, check: Optional[Callable] = None) -> None:
        self.calls[id(obj)] = check
        self._keep.append(obj)

    def create(self, cls: type) -> None:
        self.classes.add(id(cls))
        self._keep.append(cls)


_TENSOR_REBUILD_FUNCTIONS = (
    '_rebuild_parameter', '_rebuild_parameter_with_state', '_rebuild_qtensor', '_rebuild_tensor',
    '_rebuild_tensor_v2', '_rebuild_tensor_v3', '_rebuild_sparse_tensor',
    '_rebuild_meta_tensor_no_storage', '_rebuild_nested_tensor', '_rebuild_wrapper_subclass',
    '_rebuild_device_tensor_from_numpy', '_rebuild_device_tensor_from_cpu_tensor')


def _tensor_globals() -> Dict[str, Any]:
    """What a pickle needs to name for tensors: torch's own weights-only allow-list.

    Spelled out here, as the newest torch admits it, because torch 2.1's list
    is narrower (no bytes, sets or torch.device); merged with the running
    torch's list, so that a tensor kind a newer torch adds loads too.
    """
    from torch import _weights_only_unpickler
    allowed: Dict[str, Any] = {
        'collections.OrderedDict': collections.OrderedDict,
        'collections.Counter': collections.Counter,
        'builtins.set': set, 'builtins.frozenset': frozenset, 'builtins.complex': complex,
        'builtins.bytearray': bytearray, '_codecs.encode': _codecs.encode,
        'torch.nn.parameter.Parameter': torch.nn.Parameter, 'torch.Size': torch.Size,
        'torch.Tensor': torch.Tensor, 'torch.device': torch.device,
        'torch.serialization._get_layout': torch.serialization._get_layout,
        'torch._tensor._rebuild_from_type_v2': torch._tensor._rebuild_from_type_v2,
    }
    for value in vars(torch).values():
        if isinstance(value, (torch.dtype, torch.qscheme)):
            allowed[str(value)] = value  # 'torch.float32', 'torch.per_tensor_affine', ...
    for cls in torch._tensor_classes:
        allowed[f'{cls.__module__}.{cls.__name__}'] = cls
    for cls in torch._storage_classes:
        try:  # legacy storages (torch.FloatStorage) as torch itself maps them
            allowed[f'{cls.__module__}.{cls.__name__}'] = torch.serialization.StorageType(
                cls.__name__)
        except (KeyError, AttributeError):  # TypedStorage, UntypedStorage
            allowed[f'{cls.__module__}.{cls.__name__}'] = cls
    for name in _TENSOR_REBUILD_FUNCTIONS:
        if hasattr(torch._utils, name):
            allowed[f'torch._utils.{name}'] = getattr(torch._utils, name)
    allowed.update(_weights_only_unpickler._get_allowed_globals())
    return allowed


def _default_allow_list() -> AllowList:
    allow = AllowList()
    for name, obj in _tensor_globals().items():
        allow.name(name, obj)
        if isinstance(obj, type):
            allow.create(obj)
        if callable(obj) and not isinstance(obj, torch.serialization.StorageType):
            allow.call(obj, _check_encode_args if obj is _codecs.encode else None)
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):  # numpy 1 / 2 names
        allow.name(f'{module}.scalar', _MULTIARRAY.scalar)
        allow.name(f'{module}._reconstruct', _MULTIARRAY._reconstruct)
    allow.name('numpy.dtype', np.dtype)
    allow.name('numpy.ndarray', np.ndarray)  # data for _reconstruct, never called
    allow.call(_MULTIARRAY.scalar, _check_scalar_args)
    allow.call(_MULTIARRAY._reconstruct, _check_reconstruct_args)
    allow.call(np.dtype, _check_dtype_args)
    allow.name('mmengine.logging.history_buffer.HistoryBuffer', HistoryBuffer)
    allow.create(HistoryBuffer)
    allow.name('builtins.getattr', history_buffer_method)
    allow.call(history_buffer_method)
    allow.name('argparse.Namespace', argparse.Namespace)
    allow.create(argparse.Namespace)
    allow.builds.update({
        torch.Tensor: lambda inst, state: inst.set_(*state),  # legacy format, as torch does
        torch.nn.Parameter: lambda inst, state: inst.__setstate__(state),
        collections.OrderedDict: _build_attributes,
        argparse.Namespace: _build_attributes,
        HistoryBuffer: _build_history_buffer,
        np.ndarray: _build_ndarray,
    })
    return allow


_DEFAULT_ALLOWED: Optional[AllowList] = None
_USER_ALLOWED: Dict[str, Any] = {}


def allow_globals(objects: Iterable[Union[Callable, tuple]]) -> None:
    """Admit more types or functions to every safe load in this process (an explicit opt-in).

    Each item is a class or function, or ``(object, 'module.name')`` for one
    saved under another name. Allowed classes may be created and have their
    state set, allowed functions called, with any arguments: allow only what
    you trust. (On torch >= 2.4, ``torch.serialization.add_safe_globals`` is
    honoured too.)
    """
    for item in objects:
        obj, name = item if isinstance(item, tuple) else (item, None)
        _USER_ALLOWED[name or f'{obj.__module__}.{obj.__qualname__}'] = obj


def _allow_list() -> AllowList:
    global _DEFAULT_ALLOWED
    if _DEFAULT_ALLOWED is None:
        _DEFAULT_ALLOWED = _default_allow_list()
    user = dict(_USER_ALLOWED)
    get_torch_safe_globals = getattr(torch.serialization, 'get_safe_globals', None)  # torch>=2.4
    for item in (get_torch_safe_globals() if get_torch_safe_globals else []):
        obj, name = item if isinstance(item, tuple) else (item, None)
        user.setdefault(name or f'{obj.__module__}.{obj.__qualname__}', obj)
    if not user:
        return _DEFAULT_ALLOWED
    allow = AllowList()
    allow.globals = dict(_DEFAULT_ALLOWED.globals)
    allow.calls = dict(_DEFAULT_ALLOWED.calls)
    allow.classes = set(_DEFAULT_ALLOWED.classes)
    allow.builds = dict(_DEFAULT_ALLOWED.builds)
    allow._keep = list(_DEFAULT_ALLOWED._keep)
    for name, obj in user.items():
        allow.name(name, obj)
        if callable(obj):
            allow.call(obj)
        if isinstance(obj, type):
            allow.create(obj)
            allow.builds.setdefault(obj, _build_user_allowed)
    return allow


# ----------------------------------------------------------------------------
# the restricted unpickler


class _Dispatch(dict):
    def __missing__(self, opcode: int):
        raise UntrustedCheckpointError(
            f'pickle opcode {bytes([opcode])!r} is not allowed in a checkpoint')


class RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, restricted to what checkpoints need (see the module docstring).

    ``torch.load`` subclasses it (and calls ``super().find_class``), so
    torch's own handling of storages and persistent ids is unchanged.
    """

    _DATA_OPCODES = (
        'PROTO FRAME STOP MARK POP POP_MARK DUP NONE NEWTRUE NEWFALSE INT BININT BININT1 '
        'BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT STRING BINSTRING SHORT_BINSTRING BINBYTES '
        'SHORT_BINBYTES BINBYTES8 BYTEARRAY8 UNICODE SHORT_BINUNICODE BINUNICODE BINUNICODE8 '
        'EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_LIST LIST EMPTY_DICT DICT EMPTY_SET '
        'FROZENSET GET BINGET LONG_BINGET PUT BINPUT LONG_BINPUT MEMOIZE GLOBAL STACK_GLOBAL '
        'PERSID BINPERSID').split()

    def __init__(self, file, *, fix_imports=True, encoding='ASCII', errors='strict',
                 buffers=None):
        super().__init__(file, fix_imports=fix_imports, encoding=encoding, errors=errors)
        self.allowed = _allow_list()

    def find_class(self, module: str, name: str):
        if self.proto < 3 and self.fix_imports:  # Python 2 names, as pickle maps them
            import _compat_pickle
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        try:  # looked up in the allow-list only: nothing is imported
            return self.allowed.globals[f'{module}.{name}']
        except (KeyError, TypeError):
            raise UntrustedCheckpointError(f'{module}.{name}') from None

    def _check_call(self, func, args) -> None:
        if id(func) not in self.allowed.calls or type(args) is not tuple:
            raise UntrustedCheckpointError(f'calling {_describe(func)}')
        check = self.allowed.calls[id(func)]
        if check is not None:
            check(args)
        if func is torch._tensor._rebuild_from_type_v2:
            # (func, new_type, args, state): it calls func(*args), which obeys the same rules
            if len(args) != 4 or not (isinstance(args[1], type)
                                      and issubclass(args[1], torch.Tensor)):
                raise UntrustedCheckpointError('_rebuild_from_type_v2 of a non-tensor type')
            self._check_call(args[0], args[2])

    def _load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        self._check_call(func, args)
        self.stack[-1] = func(*args)

    def _load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        if id(cls) not in self.allowed.classes or type(args) is not tuple:
            raise UntrustedCheckpointError(f'creating {_describe(cls)}')
        if cls is torch.nn.Parameter:  # as torch's weights-only unpickler does
            self.append(torch.nn.Parameter(*args))
        else:
            self.append(cls.__new__(cls, *args))

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        build = self.allowed.builds.get(type(inst))
        if build is None and isinstance(inst, np.dtype) and _numeric_dtype(inst):
            build = _build_dtype  # numpy 2: each dtype has its own class (Float64DType, ...)
        if build is None:
            raise UntrustedCheckpointError(f'setting the state of {_describe(inst)}')
        build(inst, state)

    def _load_append(self):
        value = self.stack.pop()
        self._target(list, 'append to').append(value)

    def _load_appends(self):
        items = self.pop_mark()
        self._target(list, 'append to').extend(items)

    def _load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._target((dict, collections.OrderedDict, collections.Counter),
                     'set an item of')[key] = value

    def _load_setitems(self):
        items = self.pop_mark()
        target = self._target((dict, collections.OrderedDict, collections.Counter),
                              'set an item of')
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _load_additems(self):
        items = self.pop_mark()
        self._target(set, 'add to').update(items)

    def _target(self, types_, what: str):
        target = self.stack[-1]
        if type(target) not in (types_ if isinstance(types_, tuple) else (types_,)):
            raise UntrustedCheckpointError(f'{what} {_describe(target)}')
        return target

    dispatch = _Dispatch({getattr(pickle, op)[0]: pickle._Unpickler.dispatch[getattr(pickle, op)[0]]
                          for op in _DATA_OPCODES})
    dispatch.update({pickle.REDUCE[0]: _load_reduce, pickle.NEWOBJ[0]: _load_newobj,
                     pickle.BUILD[0]: _load_build, pickle.APPEND[0]: _load_append,
                     pickle.APPENDS[0]: _load_appends, pickle.SETITEM[0]: _load_setitem,
                     pickle.SETITEMS[0]: _load_setitems, pickle.ADDITEMS[0]: _load_additems})


def _describe(obj) -> str:
    if isinstance(obj, type) or callable(obj):
        return f'{getattr(obj, "__module__", "?")}.{getattr(obj, "__qualname__", repr(obj))}'
    return f'a {type(obj).__module__}.{type(obj).__qualname__}'


def restricted_load(file, **kwargs):
    """``pickle.load`` with :class:`RestrictedUnpickler` (torch reads legacy headers with it)."""
    return RestrictedUnpickler(file, **kwargs).load()


# what torch.load calls as its ``pickle_module``
restricted_pickle = types.ModuleType('mmrep.checkpoint.restricted_pickle')
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = restricted_load
restricted_pickle.UnpicklingError = pickle.UnpicklingError


# ----------------------------------------------------------------------------
# is it a checkpoint at all?


def _describe_bytes(head: bytes) -> str:
    text = head.lstrip().lower()
    if text.startswith((b'<!doctype html', b'<html', b'<head', b'<?xml')) or b'<html' in text:
        return 'an HTML page'
    if text.startswith((b'{', b'[')):
        return 'text (JSON?)'
    if not head:
        return 'empty'
    try:
        head.decode('utf-8')
        return f'text starting {head[:40]!r}'
    except UnicodeDecodeError:
        return f'binary data starting {head[:8]!r}'


def check_checkpoint_format(file, name: str) -> str:
    """The format of a ``torch.save`` file: ``'zip'``, ``'tar'`` or ``'legacy'``.

    Raises :class:`NotACheckpointError` for anything else. Reads only the head
    and, for the zip format, the archive directory (not the tensors), so a
    truncated download is caught here too. The file position is kept.
    """
    start = file.tell()
    head = file.read(512)
    file.seek(start)
    advice = ('It is not a PyTorch checkpoint: check the download (a failed or redirected '
              'download often saves an error page under the expected name) and fetch it again.')
    if head.startswith(b'PK\x03\x04'):
        try:
            with zipfile.ZipFile(file) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise NotACheckpointError(
                f'{name} is a damaged or truncated zip archive ({err}). {advice}') from None
        finally:
            file.seek(start)
        if any(n.endswith('/constants.pkl') for n in names) and any('/code/' in n for n in names):
            raise NotACheckpointError(f'{name} is a TorchScript archive (torch.jit.save), not a '
                                      'checkpoint: load it with torch.jit.load.')
        if not any(n == 'data.pkl' or n.endswith('/data.pkl') for n in names):
            raise NotACheckpointError(f'{name} is a zip archive without data.pkl '
                                      f'(holds {", ".join(names[:5]) or "nothing"}). {advice}')
        return 'zip'
    if len(head) > 262 and head[257:262] == b'ustar':  # torch < 0.4 saved a tar archive
        return 'tar'
    if head[:1] == b'\x80':  # the legacy format starts with a pickled magic number
        try:
            magic = restricted_load(io.BytesIO(head))
        except Exception:  # noqa: BLE001  (whatever fails, it is not the magic number)
            magic = None
        if type(magic) is int and magic == torch.serialization.MAGIC_NUMBER:
            return 'legacy'
    raise NotACheckpointError(f'{name} is {_describe_bytes(head)}. {advice}')


# ----------------------------------------------------------------------------
# the loader


def _trusted_entries() -> set:
    return {osp.realpath(osp.expanduser(p))
            for p in os.environ.get(TRUSTED_ENV, '').split(os.pathsep) if p}


def is_trusted(path: str) -> bool:
    """Is ``path`` listed in ``MMREP_TRUSTED_CHECKPOINTS``?"""
    return isinstance(path, (str, os.PathLike)) and osp.realpath(path) in _trusted_entries()


def _forced_weights_only() -> bool:
    # torch refuses a custom pickle_module when this is set; its own VM is then used
    return os.environ.get('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '0').lower() in ('1', 'y', 'yes', 'true')


def _untrusted_message(name: str, refused: str, path: Optional[str]) -> str:
    opt_in = (f'list the file in the environment variable {TRUSTED_ENV} '
              f'({TRUSTED_ENV}={osp.abspath(path)})' if path else
              f'save it to a local file and list that in the environment variable {TRUSTED_ENV}')
    return (f'{name} holds objects that mmrep\'s safe checkpoint loader refuses: {refused}. '
            'Unpickling them could run arbitrary code, so mmrep loads only tensors, numeric '
            'numpy values, plain Python containers and the types mmengine and timm checkpoints '
            'hold. If you trust this file, opt in explicitly: ' + opt_in + ' to load it with '
            'full unpickling, or allow just the needed types with '
            'mmrep.checkpoint.allow_globals([...]).')


def _drop_executable_config(checkpoint, name: str):
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    if isinstance(meta, dict) and 'config' in meta:
        meta.pop('config')
        warnings.warn(
            f"{name}: dropped meta['config'] (a config stored as Python code, as mmcv 1.x wrote "
            "it; mmengine's Runner.resume would execute it). Trust the file "
            f'({TRUSTED_ENV}) to keep it.', stacklevel=3)
    return checkpoint


def load_checkpoint_file(file, map_location=None, *, trusted: Optional[bool] = None,
                         mmap: bool = False, name: Optional[str] = None):
    """Load a checkpoint file (path or binary file object) without running code from it.

    Args:
        file: a path, or a seekable binary file object.
        map_location: as for ``torch.load``.
        trusted: ``True`` unpickles fully (only for files you trust); ``None``
            (default) trusts the paths listed in ``MMREP_TRUSTED_CHECKPOINTS``.
        mmap: map the tensors' storage instead of reading it (zip format
            only; falls back to reading for the legacy format).
        name: how messages name the file (default: the path).

    Raises:
        NotACheckpointError: the file is not a PyTorch checkpoint.
        UntrustedCheckpointError: it holds objects outside the allow-list.
    """
    path = os.fspath(file) if isinstance(file, (str, os.PathLike)) else None
    name = name or path or getattr(file, 'name', None) or 'the checkpoint'
    if path is not None:
        if not osp.isfile(path):
            raise FileNotFoundError(f'{path} can not be found.')
        if path.endswith('.safetensors'):  # no pickle at all
            from safetensors.torch import load_file
            return load_file(path, device=str(map_location) if isinstance(
                map_location, (str, torch.device)) else 'cpu')
    if trusted is None:
        trusted = is_trusted(path) if path else False
    opened = open(path, 'rb') if path is not None else file
    try:
        fmt = check_checkpoint_format(opened, name)
        mmap = mmap and fmt == 'zip' and path is not None
        source = path if mmap else opened  # torch maps a file by its path
        if trusted:
            warnings.warn(f'{name} is trusted: loading it with full unpickling', stacklevel=2)
            return torch.load(source, map_location=map_location, weights_only=False, mmap=mmap)
        try:
            if _forced_weights_only():
                checkpoint = _torch_weights_only_load(source, map_location, mmap)
            else:
                checkpoint = torch.load(source, map_location=map_location,
                                        pickle_module=restricted_pickle, weights_only=False,
                                        mmap=mmap)
        except UntrustedCheckpointError as err:
            raise UntrustedCheckpointError(_untrusted_message(name, str(err), path)) from None
    finally:
        if opened is not file:
            opened.close()
    return _drop_executable_config(checkpoint, name)


def _torch_weights_only_load(source, map_location, mmap):
    """TORCH_FORCE_WEIGHTS_ONLY_LOAD is set: torch's own weights-only unpickler, with our numpy
    and mmengine types where torch can take them (it cannot BUILD a HistoryBuffer before 2.4)."""
    extra = [HistoryBuffer, (history_buffer_method, 'builtins.getattr'), argparse.Namespace]
    safe_globals = getattr(torch.serialization, 'safe_globals', None)
    try:
        if safe_globals is None:
            return torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)
        with safe_globals(extra):
            return torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        # torch's message names the refused global; it is passed on whole, not parsed
        raise UntrustedCheckpointError(
            f'(TORCH_FORCE_WEIGHTS_ONLY_LOAD is set, so torch\'s own weights-only unpickler '
            f'decided) {err}') from None


# ----------------------------------------------------------------------------
# URLs


def download_checkpoint(url: str, model_dir: Optional[str] = None, progress: bool = True,
                        check_hash: bool = False, file_name: Optional[str] = None) -> str:
    """Download ``url`` into torch hub's checkpoint cache (where ``torch.hub`` puts it); its path.

    A file already in the cache is not downloaded again. The download is
    :func:`mmrep.hub.download`, the one downloader: a file is kept only when it
    arrived complete (and, with ``check_hash``, its sha256 starts with the
    prefix in its name), and a web page instead of a checkpoint is refused.
    ``progress`` is accepted for ``torch.hub``'s signature; the download is
    logged instead.
    """
    from torch.hub import get_dir

    from mmrep.hub import download, hash_prefix_of
    model_dir = model_dir or osp.join(get_dir(), 'checkpoints')
    filename = file_name or osp.basename(urlparse(url).path)
    cached = osp.join(model_dir, filename)
    if not osp.exists(cached):
        download(url, cached, hash_prefix_of(filename) if check_hash else None)
    if zipfile.is_zipfile(cached):  # torch < 1.6 hub files: one checkpoint zipped
        with zipfile.ZipFile(cached) as archive:
            members = archive.infolist()
            if len(members) == 1 and not members[0].is_dir():
                archive.extractall(model_dir)
                return osp.join(model_dir, members[0].filename)
    return cached


def load_url(url: str, model_dir: Optional[str] = None, map_location=None, progress: bool = True,
             check_hash: bool = False, file_name: Optional[str] = None):
    """``torch.hub.load_state_dict_from_url`` (and mmengine's ``load_url``), loading safely."""
    path = download_checkpoint(url, model_dir, progress, check_hash, file_name)
    return load_checkpoint_file(path, map_location, name=f'{url} (downloaded to {path})')


# ----------------------------------------------------------------------------
# mmengine's CheckpointLoader schemes, all through load_checkpoint_file


def load_from_local(filename, map_location=None):
    return load_checkpoint_file(osp.expanduser(filename), map_location)


def load_from_http(filename, map_location=None, model_dir=None, progress=os.isatty(0)):
    from mmengine.dist import get_dist_info
    rank, world_size = get_dist_info()  # local rank 0 downloads first; the others read its copy
    if rank == 0:
        checkpoint = load_url(filename, model_dir, map_location, progress)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            checkpoint = load_url(filename, model_dir, map_location, progress)
    return checkpoint


def load_from_torchvision(filename, map_location=None):
    from mmengine.runner import checkpoint as mmengine_checkpoint
    name = filename.split('://', 1)[1]  # modelzoo:// (deprecated) or torchvision://
    return load_from_http(mmengine_checkpoint.get_torchvision_models()[name], map_location)


def load_from_openmmlab(filename, map_location=None):
    from mmengine.runner import checkpoint as mmengine_checkpoint
    name = filename.split('://', 1)[1]  # open-mmlab:// or openmmlab://
    name = mmengine_checkpoint.get_deprecated_model_names().get(name, name)
    url = mmengine_checkpoint.get_external_models()[name]
    if url.startswith(('http://', 'https://')):
        return load_from_http(url, map_location)
    return load_checkpoint_file(osp.join(mmengine_checkpoint._get_mmengine_home(), url),
                                map_location)


def load_from_mmcls(filename, map_location=None):
    from mmengine.runner import checkpoint as mmengine_checkpoint
    url = mmengine_checkpoint.get_mmcls_models()[filename[len('mmcls://'):]]
    return mmengine_checkpoint._process_mmcls_checkpoint(load_from_http(url, map_location))


def load_from_pavi(filename, map_location=None):
    from tempfile import TemporaryDirectory

    from pavi import modelcloud
    model = modelcloud.get(filename[len('pavi://'):])
    with TemporaryDirectory() as tmp_dir:
        downloaded = osp.join(tmp_dir, model.name)
        model.download(downloaded)
        return load_checkpoint_file(downloaded, map_location, name=filename)


def load_from_ceph(filename, map_location=None, backend='petrel'):
    from mmengine.fileio import get_file_backend
    data = get_file_backend(filename, backend_args={'backend': backend}).get(filename)
    with io.BytesIO(data) as buffer:
        return load_checkpoint_file(buffer, map_location, name=filename)


# mmengine 0.10's schemes; mmengine logs "Loads checkpoint by <name[10:]> backend"
MMENGINE_SCHEMES = {'': load_from_local, ('http://', 'https://'): load_from_http,
                    ('modelzoo://', 'torchvision://'): load_from_torchvision,
                    ('open-mmlab://', 'openmmlab://'): load_from_openmmlab,
                    'mmcls://': load_from_mmcls, 'pavi://': load_from_pavi,
                    (r'(\S+\:)?s3://', r'(\S+\:)?petrel://'): load_from_ceph}


def _register_mmengine_schemes() -> None:
    """Make every scheme of mmengine's CheckpointLoader load through load_checkpoint_file."""
    from mmengine.runner import checkpoint as mmengine_checkpoint
    for prefixes, loader in MMENGINE_SCHEMES.items():
        mmengine_checkpoint.CheckpointLoader.register_scheme(prefixes, loader, force=True)
    # mmengine's own scheme functions (load_from_torchvision, ...) call these module globals
    mmengine_checkpoint.load_url = load_url
    mmengine_checkpoint.load_from_http = load_from_http


_register_mmengine_schemes()
