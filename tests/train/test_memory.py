"""The training loop hands freed heap memory back to the OS (see ``release_freed_memory``)."""

from __future__ import annotations

import os
import sys

import pytest

from recsys_dist.train.loop import release_freed_memory


def resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_memory_goes_back_to_the_os():
    """Small blocks live on the heap, which glibc does not shrink by itself once the top of it
    is still in use; trimming returns the free pages inside it."""
    blocks = [bytearray(4096) for _ in range(50_000)]  # ~200 MiB of heap
    keep = blocks[-1]  # the top of the heap stays in use, as in a long-lived process
    del blocks
    before = resident_mib()
    assert release_freed_memory()
    assert before - resident_mib() > 100, "malloc_trim gave back less than half of 200 MiB"
    assert keep
