"""The plain limit: a network that runs only a model's convolutions (and the activations
applied directly to their outputs), so that the model cannot be faster than it.

:class:`OpRecorder` (a ``TorchFunctionMode``) watches one forward pass of the
model and records every ``conv2d`` call with its exact arguments (weights,
stride, padding, dilation, groups), where its input came from (the model's
input, an earlier conv's output, or anything else) and whether the first op
to read its output is an activation (ReLU, ReLU6, Hardswish, SiLU, ...).
:class:`PlainLimit` replays exactly that: the same conv calls in the same order,
each followed by the model's activation where the model applies one there,
and nothing else. An input the model computed with another op (an add, a
concatenation, pooling, upsampling, an attention gate) is a preallocated
tensor of the same shape and layout.

So the limit does a subset of the model's work: the same convolution FLOPs,
no more activations than the model, no other op (tested in FLOPs and op counts).
A fused network whose time equals its limit's has no overhead left besides
convs and their activations.
"""
from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# ops that read a conv output elementwise and that a runtime can fuse into the conv
ACTIVATIONS = frozenset({
    'relu', 'relu_', 'relu6', 'hardtanh', 'hardtanh_', 'hardswish', 'hardswish_', 'silu',
    'silu_', 'gelu', 'sigmoid', 'sigmoid_', 'hardsigmoid', 'hardsigmoid_', 'leaky_relu',
    'leaky_relu_', 'elu', 'elu_', 'mish', 'tanh', 'tanh_'})
# calls that read no tensor data (metadata, properties): not counted as ops
_NOT_OPS = frozenset({'__get__', '__set__', 'size', 'dim', 'numel', 'is_contiguous',
                      'is_floating_point', 'element_size', 'stride', 'data_ptr', '__len__',
                      'storage_offset', '__format__', '__repr__', 'type', 'get_device',
                      'requires_grad_', '__hash__', '__bool__', 'tolist', 'item', 'rand',
                      'empty', 'zeros', 'ones', 'randn', 'tensor'})
_CONV_ARGS = ('input', 'weight', 'bias', 'stride', 'padding', 'dilation', 'groups')


def op_name(func: Callable) -> str:
    return getattr(func, '__name__', type(func).__name__)


@dataclass
class ConvStep:
    """One recorded ``conv2d`` call and what feeds it."""
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    stride: Any
    padding: Any
    dilation: Any
    groups: int
    input_shape: Tuple[int, ...]
    source: Optional[Tuple[str, int]]  # ('input', k) | ('step', j) | None: another op made it
    channels_last: bool
    activation: Optional[Tuple[Callable, tuple, dict]] = None
    consumed: bool = field(default=False, repr=False)


class OpRecorder(TorchFunctionMode):
    """Records the conv steps (:class:`ConvStep`) and counts every op of a forward pass.

    ``inputs`` are the model's input tensors (so that convs reading them are
    told apart from convs reading computed tensors).
    """

    def __init__(self, inputs: Sequence[torch.Tensor] = ()):
        super().__init__()
        self.steps: List[ConvStep] = []
        self.ops: Counter = Counter()
        self._made_by: Dict[int, Tuple[weakref.ref, Tuple[str, int]]] = {}
        for k, tensor in enumerate(inputs):
            self._note(tensor, ('input', k))

    def _note(self, tensor: Any, source: Tuple[str, int]) -> None:
        if isinstance(tensor, torch.Tensor):
            self._made_by[id(tensor)] = (weakref.ref(tensor), source)

    def source_of(self, tensor: Any) -> Optional[Tuple[str, int]]:
        entry = self._made_by.get(id(tensor))
        # a dead weakref or another object with a reused id is not the recorded tensor
        return entry[1] if entry is not None and entry[0]() is tensor else None

    def _tensor_args(self, args, kwargs):
        for value in list(args) + list(kwargs.values()):
            if isinstance(value, torch.Tensor):
                yield value
            elif isinstance(value, (list, tuple)):
                yield from (v for v in value if isinstance(v, torch.Tensor))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = op_name(func)
        if name not in _NOT_OPS:
            self.ops[name] += 1
        if name == 'conv2d':
            call = dict(zip(_CONV_ARGS, args), **kwargs)
            step = ConvStep(call['weight'], call.get('bias'), call.get('stride', 1),
                            call.get('padding', 0), call.get('dilation', 1),
                            call.get('groups', 1), tuple(call['input'].shape),
                            self.source_of(call['input']),
                            call['input'].is_contiguous(memory_format=torch.channels_last)
                            and not call['input'].is_contiguous())
        first_reads = []
        for tensor in self._tensor_args(args, kwargs):
            source = self.source_of(tensor)
            if source is not None and source[0] == 'step' and not self.steps[source[1]].consumed:
                first_reads.append(source[1])
        out = func(*args, **kwargs)
        if name == 'conv2d':
            self.steps.append(step)
            self._note(out, ('step', len(self.steps) - 1))
        elif name in ACTIVATIONS and len(first_reads) == 1 and args \
                and self.source_of(args[0]) == ('step', first_reads[0]):
            index = first_reads[0]
            self.steps[index].activation = (func, tuple(args[1:]), dict(kwargs))
            self._note(out, ('step', index))  # the activated output stands for the step
        for index in first_reads:
            self.steps[index].consumed = True
        return out


def record(run: Callable[[], Any], inputs: Sequence[torch.Tensor] = ()) -> OpRecorder:
    """Run ``run()`` once without gradients under an :class:`OpRecorder`."""
    with torch.no_grad(), OpRecorder(inputs) as recorder:
        run()
    return recorder


class PlainLimit(nn.Module):
    """The convs of ``model(*inputs)`` (and their activations) replayed, nothing else.

    ``limit()`` takes no arguments: it reads ``inputs`` (kept) and preallocated
    tensors for conv inputs that other ops computed. ``recorded_ops`` is the
    model's op count, for comparison.
    """

    def __init__(self, model: Callable, inputs: Sequence[torch.Tensor]):
        super().__init__()
        recorder = record(lambda: model(*inputs), inputs)
        if not recorder.steps:
            raise ValueError('the model ran no conv2d: a plain limit needs convolutions')
        self.recorded_ops = recorder.ops
        self.steps = recorder.steps
        self.inputs = list(inputs)
        self.feeds: Dict[int, torch.Tensor] = {}
        last_use: Dict[int, int] = {}
        copies: Dict[int, torch.Tensor] = {}

        def copy_of(tensor):
            # a copy (the model may change later: channels_last, freed), one per tensor:
            # a head shared by five pyramid levels keeps one set of weights, as the model does
            if tensor is None:
                return None
            if id(tensor) not in copies:
                copies[id(tensor)] = tensor.detach().clone()
            return copies[id(tensor)]

        for i, step in enumerate(self.steps):
            step.weight, step.bias = copy_of(step.weight), copy_of(step.bias)
            if step.source is None:
                feed = torch.rand(step.input_shape, dtype=step.weight.dtype)
                if step.channels_last:
                    feed = feed.contiguous(memory_format=torch.channels_last)
                self.feeds[i] = feed
            elif step.source[0] == 'step':
                last_use[step.source[1]] = i
        # keep an output only as long as a later conv reads it
        self._release: Dict[int, List[int]] = {}
        for producer, reader in last_use.items():
            self._release.setdefault(reader, []).append(producer)
        self._kept = set(last_use)

    @property
    def convs(self) -> int:
        return len(self.steps)

    def activations(self) -> Counter:
        """Activation op names the limit applies, counted."""
        return Counter(op_name(s.activation[0]) for s in self.steps if s.activation)

    def to_memory_format(self, memory_format: torch.memory_format) -> 'PlainLimit':
        """Weights, inputs and feeds in ``memory_format`` (like a model after ``.to()``)."""
        converted: Dict[int, torch.Tensor] = {}

        def convert(t):
            if t is None or t.dim() != 4:
                return t
            if id(t) not in converted:  # shared weights stay shared
                converted[id(t)] = t.contiguous(memory_format=memory_format)
            return converted[id(t)]
        for step in self.steps:
            step.weight = convert(step.weight)
        self.inputs = [convert(t) for t in self.inputs]
        self.feeds = {i: convert(t) for i, t in self.feeds.items()}
        return self

    def forward(self) -> torch.Tensor:
        values: Dict[int, torch.Tensor] = {}
        x = None
        for i, step in enumerate(self.steps):
            if step.source is None:
                x = self.feeds[i]
            elif step.source[0] == 'input':
                x = self.inputs[step.source[1]]
            else:
                x = values[step.source[1]]
            x = F.conv2d(x, step.weight, step.bias, step.stride, step.padding, step.dilation,
                         step.groups)
            if step.activation is not None:
                func, args, kwargs = step.activation
                x = func(x, *args, **kwargs)
            if i in self._kept:
                values[i] = x
            for producer in self._release.get(i, ()):
                values.pop(producer, None)
        return x
