"""Safe loading of mmengine checkpoints under torch >= 2.6.

torch 2.6 made ``torch.load(weights_only=True)`` the default. mmengine's
checkpoints carry its MessageHub state (``HistoryBuffer`` objects) and numpy
values, which the weights-only unpickler refuses, so ``--resume`` and
``load_from`` fail with mmengine 0.10.7's loader. mmrep re-registers
mmengine's loader for local files: it still loads with ``weights_only=True``
(no pickle can run code) and allows exactly the extra types mmengine's
checkpoints hold (:data:`MMENGINE_CHECKPOINT_TYPES`). A checkpoint holding
anything else is refused with a :class:`UntrustedCheckpointError` that names
the types. To load such a file you trust, either allow its types with
``torch.serialization.add_safe_globals([...])`` or list the file in the
environment variable ``MMREP_TRUSTED_CHECKPOINTS`` (paths separated by
``os.pathsep``), which loads it with full unpickling.
"""
from __future__ import annotations

import os
import pickle
import warnings
from typing import List

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

TRUSTED_ENV = 'MMREP_TRUSTED_CHECKPOINTS'


def _numpy_types() -> list:
    """numpy arrays, scalars and dtypes, under numpy 2's and numpy 1's module names."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    allowed = [np.ndarray, np.dtype]
    for name in ('_reconstruct', 'scalar'):
        func = getattr(multiarray, name)
        # a checkpoint written under the other numpy major names the other module
        allowed += [(func, f'numpy._core.multiarray.{name}'),
                    (func, f'numpy.core.multiarray.{name}')]
    # unpickling a dtype sets the state of its class (numpy.dtypes.Float64DType, ...)
    allowed += sorted({type(np.dtype(code)) for code in np.typecodes['All'] + '?'},
                      key=lambda t: t.__name__)
    return allowed


def history_buffer_method(owner, name: str):
    """``getattr`` as a pickle of a HistoryBuffer uses it, and nothing more.

    A HistoryBuffer pickles its statistics methods (``HistoryBuffer.min``, ...)
    as ``getattr(HistoryBuffer, 'min')``. A general ``getattr`` would let a
    pickle walk from any allowed object to ``os.system``, so this one only
    returns public methods of HistoryBuffer itself.
    """
    if owner is not HistoryBuffer or name.startswith('_') \
            or not callable(getattr(HistoryBuffer, name, None)):
        raise pickle.UnpicklingError(
            f'refused getattr({getattr(owner, "__name__", type(owner).__name__)}, {name!r}): '
            'only the statistics methods of mmengine HistoryBuffer are allowed')
    return getattr(HistoryBuffer, name)


#: What mmengine 0.10.7's Runner.save_checkpoint writes besides tensors and
#: builtins: the MessageHub's HistoryBuffers (which hold numpy arrays and refer to
#: their statistics methods) and numpy scalars in logged values and runtime info.
MMENGINE_CHECKPOINT_TYPES = ([HistoryBuffer, (history_buffer_method, 'builtins.getattr')]
                             + _numpy_types())


def _allowed_names() -> set:
    names = set()
    for entry in MMENGINE_CHECKPOINT_TYPES:
        obj, name = entry if isinstance(entry, tuple) else (entry, None)
        names.add(name or f'{obj.__module__}.{obj.__qualname__}')
    names.update(f'{obj.__module__}.{obj.__qualname__}'
                 for obj in torch.serialization.get_safe_globals()
                 if not isinstance(obj, tuple))
    return names


class UntrustedCheckpointError(pickle.UnpicklingError):
    """The checkpoint holds objects that a weights-only load does not allow."""


def _trusted_files() -> set:
    return {os.path.realpath(p) for p in os.environ.get(TRUSTED_ENV, '').split(os.pathsep) if p}


def refused_types(filename: str) -> List[str]:
    """The globals in ``filename``'s pickle outside the allow-list (read, never run)."""
    found = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
    allowed = _allowed_names()
    return [name for name in found if name not in allowed]


def load_checkpoint_file(filename: str, map_location=None):
    """``torch.load`` with ``weights_only=True`` and mmengine's checkpoint types allowed.

    Files listed in ``MMREP_TRUSTED_CHECKPOINTS`` are fully unpickled.
    """
    if os.path.realpath(filename) in _trusted_files():
        warnings.warn(f'{filename} is listed in {TRUSTED_ENV}: loading it with full unpickling')
        return torch.load(filename, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_TYPES):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = refused_types(filename) or [next(
            (line.strip() for line in str(err).splitlines()
             if line.strip().startswith(('refused', 'Unsupported', 'Can only', 'Trying'))),
            '(see the cause above)')]
        raise UntrustedCheckpointError(
            f'{filename} holds objects that a safe (weights-only) load refuses: '
            f'{", ".join(refused)}. Unpickling them could run arbitrary code, so mmrep loads '
            'only tensors, builtins and the types mmengine checkpoints hold '
            '(mmrep.compat.MMENGINE_CHECKPOINT_TYPES). If you trust this file, opt in '
            'explicitly: allow those types with torch.serialization.add_safe_globals([...]) '
            f'before loading, or list the file in the environment variable {TRUSTED_ENV} '
            f'(e.g. {TRUSTED_ENV}={os.path.abspath(filename)}) to load it fully.') from err


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename: str, map_location=None):
    """mmengine's local-file loader, made safe (see the module docstring)."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return load_checkpoint_file(filename, map_location)
