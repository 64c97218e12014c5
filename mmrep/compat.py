"""mmengine 0.10.7 checkpoints under torch >= 2.6.

torch 2.6 made ``torch.load(weights_only=True)`` the default. mmengine's
checkpoints carry its MessageHub state (HistoryBuffer objects) and numpy
values, which the weights-only unpickler refuses, so ``--resume`` and
``load_from`` fail. mmrep re-registers mmengine's loader for local files to
load them as mmengine intended (full unpickling). Only load checkpoints
you trust, as with any pickle.
"""
import os

import torch
from mmengine.runner.checkpoint import CheckpointLoader


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename: str, map_location=None):
    """mmengine's local-file loader, with ``weights_only=False``."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch.load(filename, map_location=map_location, weights_only=False)
