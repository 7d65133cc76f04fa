"""The training loop hands freed heap memory back to the OS (see ``release_freed_memory``)."""

from __future__ import annotations

import os
import subprocess
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


PINNED = """
from recsys_dist.train.loop import keep_large_blocks_on_heap, release_freed_memory
from tests.train.test_memory import resident_mib

assert keep_large_blocks_on_heap()
block = bytearray(64 * 2**20)  # zero-filled: every page touched
peak = resident_mib()
del block
assert peak - resident_mib() < 32, "the freed block was unmapped, not kept on the heap"
assert release_freed_memory()
assert peak - resident_mib() > 48, "malloc_trim did not give the freed block back"
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_blocks_come_from_the_heap_and_trimming_still_returns_them():
    """Once pinned, a freed 64 MiB block stays mapped for the next one (no page faults, so
    resident memory does not drop when it is freed), and trimming then returns it. In a
    process of its own: the setting is the whole process's, as it is a worker's."""
    done = subprocess.run([sys.executable, "-c", PINNED], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
