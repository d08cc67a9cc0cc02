"""Keeping freed memory for reuse on glibc (Linux), so that NumPy's temporaries don't fault.

Every NumPy operation allocates its result. A block of the engine allocates and frees tens of
arrays of 10 kB - 1 MB per layer; glibc's defaults return freed memory at the top of the heap
to the system as soon as more than 128 kB is free (and serve arrays over 128 kB - 32 MB by
``mmap``), so the next allocation faults fresh, zeroed pages in again, a large share of the
run time on the PINN-like benchmark (``docs/benchmarks.md``). TensorFlow, JAX and PyTorch
avoid it with their own caching allocators; NumPy has none, so hessarray sets glibc's
thresholds once, the first time it computes on a CPU:

- ``M_MMAP_THRESHOLD`` 32 MiB: arrays up to 32 MiB come from the heap, not from ``mmap``;
- ``M_TRIM_THRESHOLD`` 128 MiB and ``M_TOP_PAD`` 64 MiB: up to that much freed memory is kept
  for the next allocation instead of being returned at once

(the values: :mod:`hessarray.tuning`).

This is a process-wide setting of the C allocator (it never changes which memory NumPy
returns to Python, only when freed pages go back to the system). ``HESSARRAY_MALLOC=0`` in
the environment leaves the allocator alone; other C libraries (musl, macOS, Windows) are
left alone too.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading

from ..tuning import MMAP_THRESHOLD, TOP_PAD, TRIM_THRESHOLD

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {_M_MMAP_THRESHOLD: MMAP_THRESHOLD, _M_TRIM_THRESHOLD: TRIM_THRESHOLD, _M_TOP_PAD: TOP_PAD}

_done = False
_applied = False
_lock = threading.Lock()


def keep_freed_memory() -> bool:
    """Set glibc's allocator thresholds (once per process). Returns whether they are set."""
    global _done
    if not _done:
        with _lock:
            if not _done:
                _apply()
                _done = True
    return _applied


def _apply() -> None:
    global _applied
    if os.environ.get("HESSARRAY_MALLOC", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - no C library symbols
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(option, value) == 1 for option, value in SETTINGS.items())
