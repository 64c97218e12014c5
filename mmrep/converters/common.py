"""Minimal shared types of the weight converters (H8b's placeholder; H8a's version replaces it)."""
from typing import Dict, List, NamedTuple

import torch


class ConversionError(ValueError):
    """A checkpoint that cannot become the requested mmrep backbone; the message names the keys."""


class Conversion(NamedTuple):
    state_dict: Dict[str, torch.Tensor]   # mmrep backbone keys (no 'backbone.' prefix)
    dropped: List[str]                    # source keys left out (heads, constant buffers), for the report
    deploy: bool                          # True: the state is for the deploy=True (fused) backbone
