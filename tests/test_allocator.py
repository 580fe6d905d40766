"""The run's allocator setting keeps freed memory for the next model copy and gives it back between models."""

import subprocess
import sys
from pathlib import Path

import pytest

from conformance.core.allocator import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None or not Path("/proc/self/statm").exists(), reason="needs glibc and /proc")

# Resident memory after a 64 MiB tensor is freed, then after release_freed_memory; in a fresh
# process, since the setting holds for the whole process.
_PROBE = """
import os, sys, torch
from conformance.core.allocator import release_freed_memory, reuse_freed_memory
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
before = resident()
tensor = torch.ones(64 * 2**20 // 4)
del tensor
freed = resident()
release_freed_memory()
print(freed - before, resident() - before)
"""

MIB = 2**20


def _resident_growth(mode: str) -> tuple[int, int]:
    result = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    freed, released = map(int, result.stdout.split())
    return freed, released


def test_freed_memory_is_kept_for_the_next_copy_and_given_back_between_models():
    freed, released = _resident_growth("reuse")
    assert freed >= 60 * MIB  # kept: the next allocation of this size takes these pages
    assert released < 16 * MIB  # given back by release_freed_memory


def test_without_the_setting_freed_memory_goes_back_at_once():
    """The control: glibc's default gives a large block's pages back as it is freed, which is
    why every copy of a large model faults in fresh pages."""
    freed, _ = _resident_growth("default")
    assert freed < 16 * MIB


def test_a_models_work_leaves_the_objects_before_it_out_of_collection_and_collects_its_own_cycles():
    import gc
    import weakref

    from conformance.core.allocator import one_models_memory

    class Node:
        pass

    before = gc.get_freeze_count()
    with one_models_memory():
        assert gc.get_freeze_count() > before
        cycle = Node()
        cycle.itself = cycle
        alive = weakref.ref(cycle)
        del cycle
    assert gc.get_freeze_count() == 0
    assert alive() is None
