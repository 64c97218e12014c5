"""Interleaved timing: every runner of a group measured round by round, in rotating order.

Measuring A's calls and then B's lets any change of machine load between the
two decide the comparison. :func:`interleaved` measures all runners of a group
(the paths of one model, and its peers) in rounds; in each round each runner
gives one sample, and the order rotates from round to round (A B C, B C A,
C A B, ...; with two runners A B, B A, ...) so that no runner always follows
the same one. Samples of the same round are paired (:mod:`mmrep.benchmark.stats`).

A sample is the mean time of ``calls`` back-to-back calls, with ``calls``
chosen per runner so that a sample lasts at least ``min_sample_ms`` (the
timer's and the scheduler's granularity matter less), from the second
warm-up call (the first one pays one-time costs).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

DEFAULT_ROUNDS = 15
MIN_ROUNDS = 5
DEFAULT_MIN_SAMPLE_MS = 20.0


@dataclass
class Samples:
    """Per-call milliseconds of one runner, one value per round."""
    ms: List[float] = field(default_factory=list)
    calls: int = 1
    warmup_ms: List[float] = field(default_factory=list)


def rotation(names: List[str], round_index: int) -> List[str]:
    """The order of ``names`` in round ``round_index``: rotated by one each round."""
    if not names:
        return []
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def plan_rounds(per_round_ms: float, rounds: int, max_seconds: Optional[float],
                min_rounds: int = MIN_ROUNDS) -> int:
    """``rounds``, or fewer (never below ``min_rounds``) to stay within ``max_seconds``."""
    if rounds < 1:
        raise ValueError(f'rounds must be at least 1, got {rounds}')
    if max_seconds is None or per_round_ms <= 0:
        return rounds
    fit = int(max_seconds * 1000 / per_round_ms)
    return max(min(min_rounds, rounds), min(rounds, fit))


def calls_per_sample(call_ms: float, min_sample_ms: float) -> int:
    if call_ms <= 0:
        return 1
    return max(1, math.ceil(min_sample_ms / call_ms))


def _timed(run: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) * 1000 / calls


def interleaved(runners: Mapping[str, Callable[[], Any]], rounds: int = DEFAULT_ROUNDS,
                warmup: int = 2, min_sample_ms: float = DEFAULT_MIN_SAMPLE_MS,
                max_seconds: Optional[float] = None, min_rounds: int = MIN_ROUNDS,
                clock: Callable[[Callable[[], Any], int], float] = _timed,
                on_round: Optional[Callable[[int, int], None]] = None) -> Dict[str, Samples]:
    """Time every runner in rotating rounds; ``{name: Samples}`` with equally many samples.

    Args:
        runners: name -> callable doing one inference (no arguments).
        rounds: samples per runner (fewer, at least ``min_rounds``, when a
            round would make the group exceed ``max_seconds``).
        warmup: untimed calls per runner first (at least 1); the last one
            sizes ``calls``.
        min_sample_ms: a sample lasts at least this long.
        clock: ``clock(run, calls) -> ms per call`` (tests replace it).
        on_round: called as ``on_round(done, total)`` after each round.
    """
    if not runners:
        raise ValueError('nothing to time: no runners')
    names = list(runners)
    samples = {name: Samples() for name in names}
    for name in names:  # each runner's one-time costs first, in a fixed order
        for _ in range(max(1, warmup)):
            samples[name].warmup_ms.append(clock(runners[name], 1))
        samples[name].calls = calls_per_sample(samples[name].warmup_ms[-1], min_sample_ms)
    per_round = sum(s.warmup_ms[-1] * s.calls for s in samples.values())
    total = plan_rounds(per_round, rounds, max_seconds, min_rounds)
    for r in range(total):
        for name in rotation(names, r):
            samples[name].ms.append(clock(runners[name], samples[name].calls))
        if on_round is not None:
            on_round(r + 1, total)
    return samples
