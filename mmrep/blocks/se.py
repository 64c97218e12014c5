"""Squeeze-and-excitation, shared by the blocks that gate their output channels. Pure torch."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """``x * gate(up(act(down(mean_hw(x)))))``: a per-channel gate from global context.

    The squeeze is a true global mean over H and W, so any input size works
    (the official RepVGG pools with ``avg_pool2d(kernel=W)``, which is wrong
    for non-square inputs). The block is not linear, so it is never fused;
    it has no norm layer and is the same in training and deploy form.

    Args:
        channels: input (= output) channels.
        reduced_channels: width of the bottleneck between ``down`` and ``up``.
        act_layer: builds the bottleneck activation.
        gate_layer: builds the gate (sigmoid; RepGhost uses a hard sigmoid).
    """

    def __init__(self, channels: int, reduced_channels: int,
                 act_layer: Callable[[], nn.Module] = nn.ReLU,
                 gate_layer: Callable[[], nn.Module] = nn.Sigmoid):
        super().__init__()
        if reduced_channels < 1:
            raise ValueError(f'reduced_channels must be >= 1, got {reduced_channels}')
        self.down = nn.Conv2d(channels, reduced_channels, 1, bias=True)
        self.act = act_layer()
        self.up = nn.Conv2d(reduced_channels, channels, 1, bias=True)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x.mean(dim=(2, 3), keepdim=True)
        return x * self.gate(self.up(self.act(self.down(context))))
