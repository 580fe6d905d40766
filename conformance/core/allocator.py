"""Freed model memory kept for the next copy: glibc's allocator set for a run's many copies.

Every unit works on deep copies of the model (``timing.deep_copy``), and glibc serves each
allocation of 32 MiB or more (a large model's big weights) with fresh pages from the kernel,
which faults them in and zeroes them on every copy: a VGG-11 copy takes about 220 ms, most of
it page faults. :func:`reuse_freed_memory` has the allocator take every block from its heap
and keep what is freed there (``mallopt``: ``M_MMAP_MAX`` 0, ``M_TRIM_THRESHOLD`` 2 GiB), so
that a copy reuses the pages of the copy before it (VGG-11: about 50 ms);
:func:`release_freed_memory` gives the free pages back between models (``malloc_trim``,
after a garbage collection).

:func:`one_models_memory` spares Python's cyclic garbage collector the objects alive when a
model's work starts (the imported modules of torch, torchvision and timm: about a million
objects), which each full collection would otherwise walk again (FX graphs and model copies
make a run trigger dozens of them per model), and releases what the model's work freed.

Only ``conformance run`` and its worker processes set them: ``conformance bench`` reads the
resident set size for its memory metrics, and a user's process (``assert_conforms``, the
pytest plugin) is left as it is. Where the C library is not glibc, both do nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
from typing import Iterator

__all__ = ["one_models_memory", "release_freed_memory", "reuse_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_AT_TOP = 2**31 - 1  # bytes free at the top of the heap that are kept, not given back


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # only glibc has it
    except (OSError, AttributeError):
        return None
    return libc


def reuse_freed_memory() -> bool:
    """Serve every allocation from the heap and keep freed memory there, for this process;
    whether it took effect (glibc only)."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_AT_TOP))


def release_freed_memory() -> None:
    """Collect the garbage and give the heap's free pages back to the system (between models)."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def one_models_memory() -> Iterator[None]:
    """The work of one model. Inside, the objects alive on entry are left out of the cyclic
    garbage collector's passes (``gc.freeze``); on leaving, the garbage made inside is collected
    without walking them again, the free pages go back to the system, and they are put back."""
    gc.freeze()
    try:
        yield
    finally:
        release_freed_memory()
        gc.unfreeze()
