"""Wall time and peak memory per phase, for the manifest.

`ru_maxrss` only knows the peak of the whole process, so a phase's CPU peak is sampled by a
background thread reading the resident set size; on CUDA the allocator's own peak counter is reset
at the start of each phase. Both are cheap enough to leave on for every command.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import psutil
import torch


@dataclass
class PhaseRecord:
    """What one phase cost: seconds of wall time and the highest memory seen during it, beside the
    resident size it started from (their difference is what the phase itself needed)."""

    name: str
    wall_s: float
    peak_rss_bytes: int
    start_rss_bytes: int
    peak_cuda_bytes: int | None = None


class _RssSampler(threading.Thread):
    """Polls the process's resident set size until stopped and keeps the maximum."""

    def __init__(self, interval_s: float) -> None:
        super().__init__(daemon=True)
        self._process = psutil.Process()
        self._interval_s = interval_s
        self._stop_event = threading.Event()
        self.start_rss = self.peak = self._process.memory_info().rss

    def run(self) -> None:
        while not self._stop_event.wait(self._interval_s):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, self._process.memory_info().rss)


@dataclass
class PhaseTimer:
    """Collects `PhaseRecord`s; use `with timer.phase("load"):` around each step of a command."""

    sample_interval_s: float = 0.02
    records: list[PhaseRecord] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sampler = _RssSampler(self.sample_interval_s)
        sampler.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            wall = time.perf_counter() - start
            peak_rss = sampler.stop()
            peak_cuda = torch.cuda.max_memory_allocated() if cuda else None
            self.records.append(PhaseRecord(name, round(wall, 4), peak_rss, sampler.start_rss, peak_cuda))

    def as_dicts(self) -> list[dict]:
        return [asdict(r) for r in self.records]
