"""Pick the fastest of several exact methods for a case by timing them once, and remember it.

Used by :func:`gfverify.flow.hvp` with ``method="auto"``: which HVP method is fastest depends
on the network, batch shape, dtype and device (on the 2-core development CPU reverse-over-
reverse beat forward-over-reverse by ~2× on ResNet-56; on GPUs the order can differ), so it is
measured, like ``torch.backends.cudnn.benchmark`` does for convolution algorithms.

Procedure for a case not seen before: each candidate runs twice on the same input, the first
call untimed (one-off costs: allocation, kernel selection), the second timed; the fastest
second call wins and its result is returned, so the trial's work is used. The choice is cached
per case key for the life of the process; :func:`choices` lists them (benchmarks record them).

All candidates compute the same quantity exactly, so only rounding differs between them — but
a choice made by timing can differ between processes, so "auto" gives up bit-for-bit
reproducibility across runs. That is why it is opt-in and never a default.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Choice:
    """The method chosen for one case and the timed seconds of every candidate."""

    method: str
    seconds: dict[str, float]


_CHOICES: dict[Hashable, Choice] = {}


def choose(
    key: Hashable,
    candidates: Sequence[str],
    run: Callable[[str], T],
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[str, T | None]:
    """(method, result): the cached choice for ``key`` (result None: nothing ran), or the
    fastest candidate by the procedure above with its timed result.

    ``run(method)`` must do the whole work and return only when it is done (synchronise an
    asynchronous device inside it). A candidate that raises is skipped; if all raise, the last
    error propagates.
    """
    if key in _CHOICES:
        return _CHOICES[key].method, None
    if not candidates:
        raise ValueError("no candidate methods to choose from")
    seconds: dict[str, float] = {}
    results: dict[str, T] = {}
    error: Exception | None = None
    for method in candidates:
        try:
            run(method)
            start = clock()
            results[method] = run(method)
            seconds[method] = clock() - start
        except Exception as exc:  # noqa: BLE001 - a failing candidate is just not chosen
            error = exc
    if not seconds:
        assert error is not None
        raise error
    best = min(seconds, key=lambda m: (seconds[m], list(candidates).index(m)))
    _CHOICES[key] = Choice(best, seconds)
    return best, results[best]


def choices() -> dict[Hashable, Choice]:
    """Every choice made so far in this process, by case key."""
    return dict(_CHOICES)


def forget() -> None:
    """Drop every cached choice (the next call of each case times again)."""
    _CHOICES.clear()
