"""Keeping the resident set close to what is alive: glibc's allocator, tuned and trimmed.

glibc keeps freed heap pages and, after a large block is freed, serves later large tensors from the
heap too, so a process's resident size follows its high-water mark rather than its live tensors.
The calibration engine frees a block-sized working set after every stage; these two calls make
that visible to the OS. Other C libraries have their own policies: there, both do nothing.
"""

from __future__ import annotations

import ctypes
from contextlib import suppress

#: glibc's `mallopt` parameter for the size from which allocations get their own mapping.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 1024 * 1024
#: Set once the process has chosen memory over speed (streaming): see `release_forward_heap`.
_memory_first = False


def prefer_mmap_for_large_allocations() -> None:
    """Give every allocation of 1 MiB or more its own mapping, returned to the OS when freed.

    glibc raises this threshold each time a large block is freed (up to 32 MiB), after which
    tensors of a block's size come from the heap and their pages stay resident after they are
    freed: a block's transient peak then becomes the floor of the next. A fixed threshold turns that
    off. It must be set before the run reads anything: glibc serves a large request from free heap
    before it maps new memory, so a heap grown earlier (on SmolLM2, by the finiteness check's 8 MB
    chunks: 450 MB of heap, 300 MB of it free, in one run out of two) holds the run's tensors,
    whose freed pages stay resident until the next trim (50 MB more at the peak). Streaming is for
    when memory is the constraint, so it pays the page faults, and the process keeps choosing
    memory over speed from then on (`release_forward_heap`).
    """
    global _memory_first
    _memory_first = True
    with suppress(OSError, AttributeError):  # not glibc: its allocator decides
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


def return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise), so each block starts from
    the same floor instead of the high-water mark of the block before."""
    with suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def release_forward_heap() -> None:
    """After each calibration forward, when the process chose memory over speed: hand back the heap
    the forward freed. glibc kept it otherwise; on SmolLM2 (64 × 256 tokens) one pass over a block
    grew the heap by 85 MB beside its 38 MB of outputs. It costs ×1.07 the wall time of a GPTQ run,
    so an in-memory run skips it."""
    if _memory_first:
        return_freed_memory()
